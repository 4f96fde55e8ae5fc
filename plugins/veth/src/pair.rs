//! The veth pair in one request: the host end here, the container end created directly inside the
//! pod (nothing is moved between namespaces). A taken host name moves on to the next candidate; a
//! taken container name is an error. The plugins name the host end differently (bridge: stable per
//! attachment, ptp: random as the reference's) and word the failures as their reference plugins do.

use twill_cni::Error as CniError;
use twill_kernel::{Error, Handle, Link, MacAddr, NetNs, VethOptions, VethSpec};

/// The created pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub host: Link,
    /// ifindex of the container end inside the pod namespace.
    pub container_index: u32,
}

/// Why no pair was created.
#[derive(Debug)]
pub enum PairError {
    /// The container end's name already exists in the pod.
    ContainerNameTaken,
    /// Every candidate host name was taken; the kernel's last refusal.
    NoFreeName(Option<Error>),
    /// Looking the container end up in the pod failed.
    Lookup(Error),
    /// The kernel refused the pair for another reason.
    Create(Error),
    /// No candidate host name could be made.
    Name(CniError),
}

/// What the pair looks like.
#[derive(Debug, Clone, Copy)]
pub struct PairSpec<'a> {
    /// The pod's namespace, where the container end is created.
    pub pod: &'a NetNs,
    /// The container end's name.
    pub ifname: &'a str,
    pub mtu: Option<u32>,
    /// The container end's MAC; `None` lets the kernel choose.
    pub container_mac: Option<MacAddr>,
    /// A bridge to enslave the host end to in the creating request (one RTNL round trip less than a
    /// separate "set master"; a failure to attach removes the pair in the kernel already).
    pub master: Option<u32>,
}

/// Creates the pair from `host`, its host end (up) named by the candidates `host_name(0)`,
/// `host_name(1)`, … up to `attempts`; `pod` is a socket in the namespace of the container end, which
/// stays down until its addresses are on.
pub fn create_pair(
    host: &Handle,
    pod: &Handle,
    pair: &PairSpec<'_>,
    attempts: u32,
    mut host_name: impl FnMut(u32) -> Result<String, CniError>,
) -> Result<Pair, PairError> {
    let mut spec = VethSpec {
        name: String::new(),
        peer_name: pair.ifname.to_string(),
        peer_netns: Some(pair.pod),
        mtu: pair.mtu,
        mac: None,
        peer_mac: pair.container_mac,
        up: true,
    };
    // One queue per end, which is what a veth uses: spares two expedited RCU grace periods under the
    // RTNL lock per pair.
    let opts = VethOptions {
        master: pair.master,
        single_queue: true,
    };
    let mut last_err = None;
    for attempt in 0..attempts {
        spec.name = host_name(attempt).map_err(PairError::Name)?;
        match host.create_veth_with(&spec, &opts) {
            Ok(link) => {
                let container_index = match link.peer_index {
                    Some(i) => i,
                    None => {
                        pod.link_by_name(&spec.peer_name)
                            .map_err(PairError::Lookup)?
                            .index
                    }
                };
                return Ok(Pair {
                    host: link,
                    container_index,
                });
            }
            // EEXIST names neither side: ask the pod whether the container name is the one taken.
            Err(e) if e.is_exists() => match pod.link_by_name(&spec.peer_name) {
                Ok(_) => return Err(PairError::ContainerNameTaken),
                Err(le) if le.is_not_found() => last_err = Some(e),
                Err(le) => return Err(PairError::Lookup(le)),
            },
            Err(e) => return Err(PairError::Create(e)),
        }
    }
    Err(PairError::NoFreeName(last_err))
}
