//! The `macvlan` CNI plugin: a macvlan on a master device (the node's default-route device unless
//! `master` is set; a device of the pod itself with `linkInContainer`), created directly inside the pod,
//! in `bridge` (default), `private`, `vepa` or `passthru` mode; IPAM's addresses and routes on it, or only
//! up without IPAM.
//!
//! - ADD: the device first, then IPAM, each undone on failure (the device is deleted, IPAM released).
//! - DEL: IPAM DEL, then the device in the pod; succeeds without the netns. No state on the node, so
//!   GC has nothing to collect but IPAM's.

mod add;
pub mod check;
pub mod config;

use config::MacvlanConf;
use twill_cni::env::Command;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Plugin, Request, Result};
use twill_ipam::provider as ipam;
use twill_veth::iface;

#[derive(Debug, Default)]
pub struct Macvlan;

impl Plugin for Macvlan {
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
        let _lock = AttachmentLock::of(req)?;
        add::add(req)
    }

    /// As the reference: IPAM first (its error wins), then the device; nothing of the config but
    /// `ipam` is needed, so a master that is gone does not block DEL.
    fn del(&self, req: &Request) -> Result<()> {
        let _lock = AttachmentLock::of(req)?;
        let ifname = req.ifname()?.as_str();
        if let Some(t) = req.config.ipam_type() {
            ipam::run(t, Command::Del, req)?;
        }
        iface::delete_in_pod(req, ifname)
    }

    fn check(&self, req: &Request) -> Result<()> {
        check::check(req)
    }

    fn status(&self, req: &Request) -> Result<()> {
        iface::ipam_only(Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let _ = MacvlanConf::load(req)?;
        iface::ipam_only(Command::Gc, req)
    }
}
