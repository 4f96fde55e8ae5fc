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
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};

#[derive(Debug, Default)]
pub struct HostDevice;

/// ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
fn lock_attachment(req: &Request) -> Result<AttachmentLock> {
    AttachmentLock::acquire(
        req.config.name.as_str(),
        req.container_id()?.as_str(),
        req.ifname()?.as_str(),
    )
}

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
    let sandbox = req.env.netns.as_deref()?.display().to_string();
    let prev = req.config.prev_result().ok()??;
    prev.interfaces
        .into_iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))?
        .mac
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
        let _lock = lock_attachment(req)?;
        add::add(req)
    }

    /// As the reference: the config is validated, IPAM released (its error wins) and the device
    /// returned.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = HostDeviceConf::load(req)?;
        let _lock = lock_attachment(req)?;
        let ifname = req.ifname()?.as_str();
        // IPAM is released while the device moves (a namespace move waits for the kernel's RCU grace
        // periods); its error wins, as in the reference, which releases it first.
        let pending = match conf.ipam_type.as_deref() {
            Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
            None => None,
        };
        let returned = if conf.dpdk {
            Ok(())
        } else {
            return_device(req, ifname)
        };
        if let Some(p) = pending {
            p.wait()?;
        }
        returned
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
        let _ = HostDeviceConf::load(req)?;
        match req.config.ipam_type() {
            Some(t) => ipam::run(t, Command::Gc, req),
            None => Ok(()),
        }
    }
}
