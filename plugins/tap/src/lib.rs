//! The `tap` CNI plugin: a persistent tap device created in the pod as `CNI_IFNAME` (for a VM or a
//! userspace stack in the pod to attach to), with the reference's keys: `multiQueue`, `mtu`, `mac`
//! (`CNI_ARGS` `MAC`, `runtimeConfig.mac`), `owner`, `group`, `selinuxContext`, `bridge` (a bridge in
//! the pod it becomes a port of); IPAM's addresses and routes on it, or only up without IPAM.
//!
//! - ADD: the tap first, then IPAM, each undone on failure (the tap is deleted, IPAM released).
//! - DEL: IPAM DEL, then the tap in the pod; succeeds without the netns or the tap. No state on the
//!   node, so GC has nothing to collect but IPAM's.

mod add;
pub mod check;
pub mod config;
mod selinux;

use config::TapConf;
use twill_cni::env::Command;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Error, Plugin, Request, Result};
use twill_ipam::provider as ipam;

#[derive(Debug, Default)]
pub struct Tap;

/// ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
fn lock_attachment(req: &Request) -> Result<AttachmentLock> {
    AttachmentLock::acquire(
        req.config.name.as_str(),
        req.container_id()?.as_str(),
        req.ifname()?.as_str(),
    )
}

impl Plugin for Tap {
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let _lock = lock_attachment(req)?;
        add::add(req)
    }

    /// The config is validated, then IPAM is released while the tap is deleted (deleting a tap waits for
    /// the kernel's RCU grace periods); IPAM's error wins, as in the reference, which releases it first.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = TapConf::load(req)?;
        let _lock = lock_attachment(req)?;
        let ifname = req.ifname()?.as_str();
        let pending = match conf.ipam_type.as_deref() {
            Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
            None => None,
        };
        let deleted = match twill_veth::pod::socket_for_del(req.env.netns.as_deref()) {
            Ok(Some(h)) => match h.delete_link_by_name(ifname) {
                Err(e) if !e.is_not_found() => {
                    Err(Error::failed(format!("failed to delete {ifname:?}: {e}")))
                }
                _ => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Some(p) = pending {
            p.wait()?;
        }
        deleted
    }

    fn check(&self, req: &Request) -> Result<()> {
        check::check(req)
    }

    fn status(&self, req: &Request) -> Result<()> {
        match req.config.ipam_type() {
            Some(t) => ipam::run(t, Command::Status, req),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let _ = TapConf::load(req)?;
        match req.config.ipam_type() {
            Some(t) => ipam::run(t, Command::Gc, req),
            None => Ok(()),
        }
    }
}
