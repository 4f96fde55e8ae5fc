//! The pod's namespace as DEL sees it: possibly gone, which is success.

use std::path::Path;

use twill_cni::{Context, Error, Result};
use twill_kernel::{Handle, NetNs};

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
