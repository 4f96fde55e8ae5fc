//! The pod's namespace as DEL sees it: possibly gone, which is success.

use std::path::Path;
use std::time::{Duration, Instant};

use twill_cni::{Context, Error, Result};
use twill_kernel::{sysctl, Family, Handle, NetNs};

/// A socket in the pod's namespace, or `None` when there is nothing to delete there: no netns given, the
/// path is gone, or it no longer is a namespace (an unmounted leftover file) — all success for DEL
/// (docs/cni-spec-notes.md §4).
pub fn socket_for_del(netns: Option<&Path>) -> Result<Option<Handle>> {
    let Some(path) = netns else {
        return Ok(None);
    };
    let pod = match NetNs::open(path) {
        Ok(ns) => ns,
        Err(e) if e.is_not_found() || e.io().kind() == std::io::ErrorKind::InvalidInput => {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::failed(format!(
                "failed to open netns {:?}: {e}",
                path.display()
            )))
        }
    };
    // The socket keeps its namespace; the fd can go.
    Handle::in_netns(&pod)
        .map(Some)
        .context("netlink socket in the pod namespace")
}

/// Whether ADD fails when the pod interface's `keep_addr_on_down` cannot be set: ptp requires it, bridge and
/// macvlan set it on a best-effort basis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAddrOnDown {
    Required,
    BestEffort,
}

/// IPv6 must be enabled on `lo` and the interface before an IPv6 address is added (the reference's
/// `ConfigureIface`); `keep_addr_on_down` keeps the addresses if the link is ever taken down. Runs in the
/// calling thread's namespace: call it on a thread inside the pod ([`enable_ipv6_in`] from outside).
pub fn enable_ipv6(ifname: &str, keep_addr: KeepAddrOnDown) -> Result<()> {
    for dev in ["lo", ifname] {
        let key = format!("net/ipv6/conf/{dev}/disable_ipv6");
        match sysctl::read(&key) {
            Ok(v) if v == "0" => {}
            Ok(_) => {
                sysctl::write(&key, "0")
                    .with_context(|| format!("failed to enable IPv6 for interface {dev:?}"))?;
            }
            // The reference only logs an unreadable value and goes on.
            Err(e) => eprintln!("failed to read sysctl {key}: {e}"),
        }
    }
    let kept = sysctl::write(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1");
    if keep_addr == KeepAddrOnDown::Required {
        kept.with_context(|| {
            format!("failed to enable keep_addr_on_down for interface {ifname:?}")
        })?;
    }
    Ok(())
}

/// [`enable_ipv6`] inside `pod`, all its sysctls on one thread that enters the namespace once.
pub fn enable_ipv6_in(pod: &NetNs, ifname: &str, keep_addr: KeepAddrOnDown) -> Result<()> {
    pod.run(|| enable_ipv6(ifname, keep_addr))
        .context("failed to enter the pod namespace")?
}

/// How long ADD waits for the pod's IPv6 addresses to finish duplicate address detection.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until no IPv6 address of the pod's interface is tentative (DAD finished), as the reference does
/// before installing routes through an IPv6 gateway; a failed DAD is an error.
pub fn settle_ipv6(h: &Handle, ifname: &str, index: u32) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let addrs = h
            .addresses(Some(index), Some(Family::V6))
            .with_context(|| format!("list addresses of {ifname:?}"))?;
        if let Some(bad) = addrs.iter().find(|a| a.dadfailed) {
            return Err(Error::failed(format!(
                "duplicate address detection failed for {} on {ifname:?}",
                bad.net
            )));
        }
        if !addrs.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            return Err(Error::failed(format!(
                "addresses of {ifname:?} still tentative after {SETTLE_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
