//! Opening the pod's namespace and the netlink sockets of a request, with the CNI error context each needs.

use std::path::Path;

use twill_cni::{Context, Result};
use twill_kernel::{Handle, NetNs};

pub(crate) fn open_pod(path: &Path) -> Result<NetNs> {
    NetNs::open(path).with_context(|| format!("failed to open netns {:?}", path.display()))
}

pub(crate) fn host_handle() -> Result<Handle> {
    Handle::current().context("netlink socket in the host namespace")
}

pub(crate) fn pod_handle(pod: &NetNs) -> Result<Handle> {
    Handle::in_netns(pod).context("netlink socket in the pod namespace")
}
