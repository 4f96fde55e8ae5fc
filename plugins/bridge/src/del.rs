//! DEL (docs/cni-spec-notes.md §10.3): idempotent and independent of the pod's namespace. IPAM DEL and the removal of
//! masquerade rules (by owner) run while the kernel deletes the veth, whose RCU wait dominates.

use crate::config::BridgeConf;
use crate::job::Job;
use crate::trace::Trace;
use crate::{ipam, masq, spoofchk};
use twill_cni::env::Command;
use twill_cni::{Error, Request, Result};
use twill_kernel::Handle;

/// Delete the container end of the attachment (its peer goes with it); a missing link is success.
fn delete_container_link(h: &Handle, ifname: &str) -> Result<()> {
    match h.delete_link_by_name(ifname) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(Error::failed(format!("failed to delete {ifname:?}: {e}"))),
    }
}

pub fn del(req: &Request) -> Result<()> {
    let mut trace = Trace::new();
    let conf = BridgeConf::load(req)?;
    let container_id = req.container_id()?.as_str();
    let ifname = req.ifname()?.as_str();
    let network = req.config.name.as_str();
    let mut errors = Vec::new();
    // The pod socket first: on 2 CPUs, starting the IPAM and firewall threads before it would only delay it,
    // while during the veth delete (which sleeps in the kernel) they have the CPU to themselves.
    let pod = twill_veth::pod::socket_for_del(req.env.netns.as_deref()).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    trace.mark("pod netns and socket");
    let pending = match conf.ipam_type.as_deref() {
        Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
        None => None,
    };
    // Masquerade is removed by owner, so it needs nothing from the pod.
    let masq_job = if conf.ip_masq {
        let (backend, owner) = (
            conf.masq_backend,
            masq::Owner::new(network, container_id, ifname),
        );
        Some(Job::spawn("masquerade", move || {
            masq::del(backend, &owner)
        })?)
    } else {
        None
    };
    trace.mark("IPAM and firewall started");
    if let Some(h) = &pod {
        if let Err(e) = delete_container_link(h, ifname) {
            errors.push(e);
        }
    }
    trace.mark("veth deleted");
    if let Some(p) = pending {
        if let Err(e) = p.wait() {
            errors.push(e);
        }
    }
    trace.mark("IPAM done");
    if let Some(job) = masq_job {
        if let Err(e) = job.join() {
            errors.push(e);
        }
    }
    trace.mark("masquerade done");
    if conf.macspoofchk {
        // Logged only, as the reference.
        if let Err(e) = spoofchk::teardown(container_id, ifname) {
            eprintln!("bridge: {e}");
        }
    }
    Error::combine(errors)
}
