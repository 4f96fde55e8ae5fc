//! ADD, transactional: IPAM runs on its own thread while the veth pair is created; every later step
//! registers its undo, the rollback runs them in reverse, and IPAM is released last.

use crate::config::PtpConf;
use crate::{container, host, masq};
use std::cell::RefCell;
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_ipam::provider as ipam;
use twill_kernel::{sysctl, Handle, Link, NetNs};
use twill_veth::{Pair, PairError, PairSpec};

/// How many host-side names to try (the reference also tries 10 random ones).
const VETH_NAME_ATTEMPTS: u32 = 10;

/// The pair in one request: the host end (up, random `veth…` name as the reference's) here, the container
/// end `ifname` (down until its addresses are on) directly inside the pod, so nothing is moved between
/// namespaces. A taken host name moves on to another; a taken `ifname` is an error.
fn create_pair(
    host: &Handle,
    pod: &NetNs,
    pod_h: &Handle,
    ifname: &str,
    mtu: Option<u32>,
) -> Result<Pair> {
    let spec = PairSpec {
        pod,
        ifname,
        mtu,
        container_mac: None,
        master: None,
    };
    let names = |_| {
        twill_kernel::random_veth_name()
            .map_err(|e| Error::failed(format!("failed to generate random veth name: {e}")))
    };
    twill_veth::create_pair(host, pod_h, &spec, VETH_NAME_ATTEMPTS, names).map_err(|e| match e {
        PairError::ContainerNameTaken => Error::failed(format!(
            "container veth name provided ({ifname}) already exists"
        )),
        PairError::Lookup(le) => Error::failed(format!("failed to look up {ifname:?}: {le}")),
        PairError::Create(e) => Error::failed(format!("failed to make veth pair: {e}")),
        PairError::NoFreeName(last) => Error::failed(format!(
            "failed to find a unique veth name: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )),
        PairError::Name(e) => e,
    })
}

/// Where ADD's IPAM call stands, for the rollback: a running call is waited for, and only a successful one
/// is released.
enum IpamState {
    Running(ipam::Pending),
    /// Finished; whether it succeeded.
    Done(bool),
}

fn iface(link: &Link) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| m.to_string()),
        ..Default::default()
    }
}

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = PtpConf::load(req)?;
    let ipam_type = conf.require_ipam()?;
    let container_id = req.container_id()?.as_str();
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let network = req.config.name.as_str();

    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    // Declared before the undo lists that borrow it.
    let host_h = Handle::current().context("netlink socket in the host namespace")?;
    // The name must be free in the pod. Checked before IPAM is asked, so a repeated ADD of a live
    // attachment can never end in releasing that attachment's lease.
    match pod_h.link_by_name(ifname) {
        Ok(_) => {
            return Err(Error::failed(format!(
                "container veth name provided ({ifname}) already exists"
            )))
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(Error::failed(format!("failed to look up {ifname:?}: {e}"))),
    }

    // Declaration order is rollback order in reverse: `undo` (kernel and firewall) runs first, IPAM is
    // released last, so its addresses are never handed out again while a half-built attachment uses them.
    let ipam_state = RefCell::new(IpamState::Running(ipam::spawn(
        ipam_type,
        Command::Add,
        req,
    )?));
    let mut ipam_undo = Undo::new();
    {
        let state = &ipam_state;
        ipam_undo.push(format!("release IPAM ({ipam_type})"), move || {
            let succeeded = match state.replace(IpamState::Done(false)) {
                IpamState::Running(p) => p.wait_result(req).is_ok(),
                IpamState::Done(ok) => ok,
            };
            if succeeded {
                ipam::run(ipam_type, Command::Del, req)
            } else {
                Ok(())
            }
        });
    }
    let mut undo = Undo::new();

    let pair = create_pair(&host_h, &pod, &pod_h, ifname, conf.mtu)?;
    let host_index = pair.host.index;
    let host_name = pair.host.name.clone();
    undo.push(format!("delete veth {host_name}"), {
        let host_h = &host_h;
        move || match host_h.delete_link(host_index) {
            Err(e) if !e.is_not_found() => Err(Error::failed(e.to_string())),
            _ => Ok(()),
        }
    });
    // Best effort, as the reference: we own this interface's routes. The veth is new: no need to read first.
    let _ = sysctl::set(&format!("net/ipv6/conf/{host_name}/accept_ra"), "0");
    let cont = pod_h
        .link_by_index(pair.container_index)
        .with_context(|| format!("failed to look up {ifname:?}"))?;

    let mut result = match ipam_state.replace(IpamState::Done(false)) {
        IpamState::Running(p) => p.wait_result(req)?,
        _ => return Err(Error::failed("IPAM was not started")),
    };
    *ipam_state.borrow_mut() = IpamState::Done(true);
    if result.ips.is_empty() {
        return Err(Error::failed("IPAM plugin returned missing IP config"));
    }
    if let Some(ip) = result.ips.iter().find(|i| i.gateway.is_none()) {
        return Err(Error::failed(format!(
            "ptp needs a gateway for every address: IPAM returned {} without one",
            ip.address
        )));
    }
    for ip in &mut result.ips {
        // Every address belongs to the container end, interfaces[1].
        ip.interface = Some(1);
    }
    host::enable_forwarding(&result)?;

    let owner = masq::Owner::new(network, container_id, ifname);
    if conf.ip_masq {
        undo.push("remove IP masquerade", {
            let (backend, owner) = (conf.masq_backend, owner.clone());
            move || masq::del(backend, &owner)
        });
    }
    // Masquerade needs only the addresses: its rules go in while the pod and the host end are configured.
    std::thread::scope(|s| -> Result<()> {
        let masq_job = conf.ip_masq.then(|| {
            let addrs: Vec<_> = result.ips.iter().map(|i| i.address).collect();
            let (backend, owner) = (conf.masq_backend, &owner);
            s.spawn(move || masq::add(backend, owner, &addrs))
        });
        let configured = container::configure(&pod, &pod_h, ifname, cont.index, &result)
            .and_then(|()| host::configure(&host_h, host_index, &host_name, &result));
        let masqueraded = match masq_job {
            Some(j) => j
                .join()
                .unwrap_or_else(|_| Err(Error::failed("masquerade thread panicked"))),
            None => Ok(()),
        };
        configured.and(masqueraded)
    })?;

    let mut container_iface = iface(&cont);
    container_iface.sandbox = Some(netns_path.display().to_string());
    result.interfaces = vec![iface(&pair.host), container_iface];
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    undo.commit();
    ipam_undo.commit();
    Ok(result)
}
