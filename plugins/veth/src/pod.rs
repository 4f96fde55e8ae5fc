//! The pod's namespace as DEL sees it: possibly gone, which is success.

use std::path::Path;
use std::time::{Duration, Instant};

use twill_cni::{Context, Error, Result};
use twill_kernel::{Family, Handle, NetNs};

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
