//! DEL (cni-spec.md §10.3): idempotent and independent of the pod's namespace. IPAM DEL and the removal of
//! masquerade rules (by owner) run while the kernel deletes the veth, whose RCU wait dominates.

use crate::config::BridgeConf;
use crate::{combine, ipam, masq, pod_handle, spoofchk, Job};
use std::path::Path;
use twill_cni::env::Command;
use twill_cni::{Error, Request, Result};
use twill_kernel::NetNs;

/// Delete the container end of the attachment (its peer goes with it). A missing netns path, a path that
/// no longer is a namespace, or a missing link is success (§4 DEL).
fn delete_container_link(netns: Option<&Path>, ifname: &str) -> Result<()> {
    let Some(path) = netns else {
        return Ok(());
    };
    let pod = match NetNs::open(path) {
        Ok(ns) => ns,
        Err(e) if e.is_not_found() || e.io().kind() == std::io::ErrorKind::InvalidInput => {
            return Ok(())
        }
        Err(e) => {
            return Err(Error::failed(format!(
                "failed to open netns {:?}: {e}",
                path.display()
            )))
        }
    };
    let h = pod_handle(&pod)?;
    match h.delete_link_by_name(ifname) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(Error::failed(format!("failed to delete {ifname:?}: {e}"))),
    }
}

pub fn del(req: &Request) -> Result<()> {
    let conf = BridgeConf::load(req)?;
    let container_id = req.container_id()?.as_str();
    let ifname = req.ifname()?.as_str();
    let network = req.config.name.as_str();
    // IPAM DEL runs while the kernel deletes the veth (which waits for an RCU grace period).
    let pending = match conf.ipam_type.as_deref() {
        Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
        None => None,
    };
    // Masquerade is removed by owner, so it needs nothing from the pod and runs meanwhile too.
    let masq_job = if conf.ip_masq {
        let (backend, net, id, ifn) = (
            conf.masq_backend,
            network.to_string(),
            container_id.to_string(),
            ifname.to_string(),
        );
        Some(Job::spawn("masquerade", move || {
            masq::del(backend, &net, &id, &ifn)
        })?)
    } else {
        None
    };
    let mut errors = Vec::new();
    if let Err(e) = delete_container_link(req.env.netns.as_deref(), ifname) {
        errors.push(e);
    }
    if let Some(p) = pending {
        if let Err(e) = p.wait() {
            errors.push(e);
        }
    }
    if let Some(job) = masq_job {
        if let Err(e) = job.join() {
            errors.push(e);
        }
    }
    if conf.macspoofchk {
        // Logged only, as the reference.
        if let Err(e) = spoofchk::teardown(container_id, ifname) {
            eprintln!("bridge: {e}");
        }
    }
    combine(errors)
}
