//! The `loopback` plugin (docs/cni-spec-notes.md §12): brings `lo` up in the pod's namespace on ADD and down on DEL,
//! like the reference, and reports the loopback addresses it finds.

use std::net::IpAddr;
use std::path::Path;
use twill_cni::{CniResult, Command, Context, Error, Interface, IpConfig, Plugin, Request, Result};
use twill_kernel::{Handle, NetNs};

const LO: &str = "lo";

#[derive(Debug, Default)]
pub struct Loopback;

fn open_netns(path: &Path) -> Result<NetNs> {
    NetNs::open(path).context("open pod network namespace")
}

fn handle(ns: &NetNs) -> Result<Handle> {
    Handle::in_netns(ns).context("netlink socket in pod network namespace")
}

impl Plugin for Loopback {
    /// ADD and CHECK work on `lo` inside the namespace; DEL treats a namespace that is gone as done.
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let ns = open_netns(req.netns()?)?;
        let h = handle(&ns)?;
        let lo = h.link_by_name(LO).context("look up lo")?;
        h.set_link_up(lo.index).context("set lo up")?;
        // The reference refuses a `lo` carrying non-loopback addresses: something else configured it, and
        // reporting those as the pod's loopback would be wrong.
        let addrs = h
            .addresses(Some(lo.index), None)
            .context("list addresses of lo")?;
        if let Some(bad) = addrs.iter().find(|a| !a.net.addr().is_loopback()) {
            return Err(Error::failed(format!(
                "loopback interface found with non-loopback address {}",
                bad.net
            )));
        }
        if let Some(prev) = req.config.prev_result()? {
            return Ok(prev);
        }
        let sandbox = req.netns()?.display().to_string();
        let first = |v4: bool| {
            addrs
                .iter()
                .find(|a| matches!(a.net.addr(), IpAddr::V4(_)) == v4)
        };
        let ips = [first(true), first(false)]
            .into_iter()
            .flatten()
            .map(|a| IpConfig {
                interface: Some(0),
                address: a.net,
                gateway: None,
            })
            .collect();
        Ok(CniResult {
            interfaces: vec![Interface {
                name: LO.into(),
                mac: Some("00:00:00:00:00:00".into()),
                sandbox: Some(sandbox),
                ..Default::default()
            }],
            ips,
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<()> {
        // DEL must succeed when the namespace is already gone (docs/cni-spec-notes.md §4 DEL; the runtime may call it
        // late).
        let Some(path) = req.env.netns.as_deref() else {
            return Ok(());
        };
        let ns = match NetNs::open(path) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(Error::failed(format!("open pod network namespace: {e}"))),
        };
        let h = handle(&ns)?;
        match h.link_by_name(LO) {
            Ok(lo) => h.set_link_down(lo.index).context("set lo down"),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::failed(format!("look up lo: {e}"))),
        }
    }

    fn check(&self, req: &Request) -> Result<()> {
        let ns = open_netns(req.netns()?)?;
        let lo = handle(&ns)?.link_by_name(LO).context("look up lo")?;
        if !lo.up {
            return Err(Error::failed("loopback interface is down"));
        }
        Ok(())
    }
}
