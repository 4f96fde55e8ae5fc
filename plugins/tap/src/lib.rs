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
use twill_cni::{CniResult, Plugin, Request, Result};
use twill_veth::iface;

#[derive(Debug, Default)]
pub struct Tap;

impl Plugin for Tap {
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
        let _lock = AttachmentLock::of(req)?;
        add::add(req)
    }

    /// The config is validated, then IPAM is released while the tap is deleted (deleting a tap waits for
    /// the kernel's RCU grace periods); IPAM's error wins, as in the reference, which releases it first.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = TapConf::load(req)?;
        let _lock = AttachmentLock::of(req)?;
        let ifname = req.ifname()?.as_str();
        iface::release_ipam_while(req, conf.ipam_type.as_deref(), || {
            iface::delete_in_pod(req, ifname)
        })
    }

    fn check(&self, req: &Request) -> Result<()> {
        check::check(req)
    }

    fn status(&self, req: &Request) -> Result<()> {
        iface::ipam_only(Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let _ = TapConf::load(req)?;
        iface::ipam_only(Command::Gc, req)
    }
}
