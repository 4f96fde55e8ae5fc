//! The veth pair in one request: the host end here, the container end created directly inside the
//! pod (nothing is moved between namespaces). A taken host name moves on to the next candidate; a
//! taken container name is an error. The plugins name the host end differently (bridge: stable per
//! attachment, ptp: random as the reference's) and word the failures as their reference plugins do.

use twill_cni::Error as CniError;
use twill_kernel::{Error, Handle, Link, VethOptions, VethSpec};

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

/// Creates `spec` (its `name` replaced by the candidates `host_name(0)`, `host_name(1)`, … up to
/// `attempts`) from `host`, with `pod` a socket in the namespace of the container end.
pub fn create_pair(
    host: &Handle,
    pod: &Handle,
    mut spec: VethSpec<'_>,
    opts: &VethOptions,
    attempts: u32,
    mut host_name: impl FnMut(u32) -> Result<String, CniError>,
) -> Result<Pair, PairError> {
    let mut last_err = None;
    for attempt in 0..attempts {
        spec.name = host_name(attempt).map_err(PairError::Name)?;
        match host.create_veth_with(&spec, opts) {
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
