//! The `host-device` CNI plugin: one of the node's devices (chosen by `device` name, `hwaddr`,
//! `kernelpath`, `pciBusID` or runtimeConfig `deviceID`) moved into the pod as `CNI_IFNAME`, with its
//! node-side name kept in its alias; optionally IPAM's addresses and routes on it, or the node
//! device's own (`useInterfaceNetwork`).
//!
//! - ADD: the move, then IPAM, each undone on failure (the device returns to the node).
//! - DEL: IPAM DEL, then the device back to the node under its name, down (its earlier state is not
//!   known). Succeeds when the netns or the interface is gone: a virtual device is destroyed with its
//!   pod's namespace, and a physical one returns to the initial namespace by itself, under its
//!   pod-side name; DEL then gives it back its node name, found by the MAC in prevResult. No state on the node, so GC has nothing to collect but IPAM's.

mod add;
pub mod attach;
pub mod check;
pub mod config;
pub mod locate;
pub mod netstate;

use config::HostDeviceConf;
use twill_cni::env::Command;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Context, Error, Plugin, Request, Result};
use twill_kernel::{Handle, NetNs};
use twill_veth::iface;

#[derive(Debug, Default)]
pub struct HostDevice;

/// The pod's namespace for DEL, `None` when it is gone (or was never given): nothing to return.
fn pod_for_del(req: &Request) -> Result<Option<NetNs>> {
    let Some(path) = req.env.netns.as_deref() else {
        return Ok(None);
    };
    match NetNs::open(path) {
        Ok(ns) => Ok(Some(ns)),
        Err(e) if e.is_not_found() || e.io().kind() == std::io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(Error::failed(format!(
            "failed to open netns {:?}: {e}",
            path.display()
        ))),
    }
}

/// The MAC that ADD reported for `ifname` in this sandbox (DEL's prevResult), if any.
fn reported_mac(req: &Request, ifname: &str) -> Option<String> {
    let prev = req.config.prev_result().ok()??;
    iface::find_recorded(&prev, ifname, req.env.netns.as_deref()?)?
        .mac
        .clone()
        .filter(|m| !m.is_empty())
}

/// DEL's move of the pod's `ifname` back to the node; without the pod, the device the kernel returned
/// by itself gets its name back.
fn return_device(req: &Request, ifname: &str) -> Result<()> {
    let Some(pod) = pod_for_del(req)? else {
        if let Some(mac) = reported_mac(req, ifname) {
            if let Ok(node) = Handle::current() {
                attach::rename_returned(&node, &mac);
            }
        }
        return Ok(());
    };
    let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    let node = NetNs::current().context("failed to open the host namespace")?;
    attach::move_out(&pod, &pod_h, &node, ifname).map(|_| ())
}

impl Plugin for HostDevice {
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
        let _lock = AttachmentLock::of(req)?;
        add::add(req)
    }

    /// As the reference: the config is validated, IPAM released (its error wins) and the device
    /// returned.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = HostDeviceConf::load(req)?;
        let _lock = AttachmentLock::of(req)?;
        let ifname = req.ifname()?.as_str();
        iface::release_ipam_while(req, conf.ipam_type.as_deref(), || {
            if conf.dpdk {
                Ok(())
            } else {
                return_device(req, ifname)
            }
        })
    }

    fn check(&self, req: &Request) -> Result<()> {
        check::check(req)
    }

    fn status(&self, req: &Request) -> Result<()> {
        iface::ipam_only(Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let _ = HostDeviceConf::load(req)?;
        iface::ipam_only(Command::Gc, req)
    }
}
