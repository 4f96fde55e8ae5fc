//! Moving the node's device into the pod and back.
//!
//! The device's node-side name travels with it as its alias (`IFLA_IFALIAS`), as the reference keeps
//! it, so either implementation's DEL can return a device the other's ADD moved.
//!
//! Renames never happen in the node's namespace: udev and NetworkManager react to a device appearing
//! there under a pod-side name (the reference renames in a temporary namespace for the same reason).
//! Into the pod, one request moves and then renames inside the pod; back out, the device is renamed
//! inside the pod first (a device must be down to be renamed) and then moved under its own name.

use twill_cni::{Error, Result};
use twill_kernel::{Handle, LinkDetails, LinkRename, NetNs};

/// A Go-style hardware address (`aa:bb:...`, any length); empty for devices without one.
pub fn hw_addr_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The device in `h`'s namespace that is `dev` (same hardware address and kind) under one of `names`.
fn find_moved(h: &Handle, dev: &LinkDetails, names: &[&str]) -> Option<LinkDetails> {
    names.iter().find_map(|n| {
        h.link_details_by_name(n)
            .ok()
            .filter(|l| l.hw_addr == dev.hw_addr && l.link.kind == dev.link.kind)
    })
}

/// Moves `dev` (found through `node`) into `pod` as `ifname`, up, its node name in its alias; on
/// failure the device is back on the node under its name, up again if it was.
pub fn move_in(
    node: &Handle,
    pod: &NetNs,
    pod_h: &Handle,
    dev: &LinkDetails,
    ifname: &str,
) -> Result<LinkDetails> {
    let host_name = dev.link.name.as_str();
    let failed = |e: String| {
        Error::failed(format!(
            "failed to move link failed to move {ifname:?} (host: {host_name:?}) to container NS: {e}"
        ))
    };
    // The kernel moves before it renames: a taken name would leave the device in the pod under its
    // node name.
    match pod_h.link_by_name(ifname) {
        Ok(_) => return Err(failed("file exists".into())),
        Err(e) if !e.is_not_found() => return Err(failed(e.to_string())),
        Err(_) => {}
    }
    let moved = node.move_link(
        dev.link.index,
        pod,
        &LinkRename {
            name: Some(ifname),
            alias: Some(host_name),
            up: true,
        },
    );
    let outcome = moved.map_err(|e| e.to_string()).and_then(|()| {
        pod_h
            .link_details_by_name(ifname)
            .map_err(|e| e.to_string())
    });
    match outcome {
        Ok(d) => Ok(d),
        Err(e) => {
            restore_to_node(node, pod_h, dev, &[ifname, host_name]);
            Err(failed(e))
        }
    }
}

/// Best effort, after a failed move: the device back on the node as it was.
fn restore_to_node(node: &Handle, pod_h: &Handle, dev: &LinkDetails, names: &[&str]) {
    let node_ns = match NetNs::current() {
        Ok(ns) => ns,
        Err(_) => return,
    };
    if let Some(in_pod) = find_moved(pod_h, dev, names) {
        let _ = pod_h.move_link(
            in_pod.link.index,
            &node_ns,
            &LinkRename {
                name: Some(&dev.link.name),
                alias: Some(dev.alias.as_deref().unwrap_or("")),
                up: false,
            },
        );
    }
    if dev.link.up {
        if let Ok(back) = node.link_by_name(&dev.link.name) {
            let _ = node.set_link_up(back.index);
        }
    }
}

/// What DEL found in the pod.
pub enum MoveOut {
    /// The device is back on the node under this name (down: its earlier state is not known).
    Returned(String),
    /// No such interface in the pod: nothing to return.
    Absent,
}

/// Returns the pod's `ifname` to the node namespace `node_ns` (the caller's) under the name in its alias.
pub fn move_out(pod_ns: &NetNs, pod_h: &Handle, node_ns: &NetNs, ifname: &str) -> Result<MoveOut> {
    let dev = match pod_h.link_details_by_name(ifname) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(MoveOut::Absent),
        Err(e) => {
            return Err(Error::failed(format!(
                "failed to find {ifname:?} in containerNS: {e}"
            )))
        }
    };
    let Some(host_name) = dev.alias.clone() else {
        return Err(Error::failed(format!(
            "failed to find original ifname for {ifname:?} (alias is not set)"
        )));
    };
    let index = dev.link.index;
    if dev.link.up {
        pod_h
            .set_link_down(index)
            .map_err(|e| Error::failed(format!("failed to set {ifname:?} down: {e}")))?;
    }
    let undo_rename = || {
        let _ = pod_h.rename_link(
            index,
            &LinkRename {
                name: Some(ifname),
                alias: Some(&host_name),
                up: dev.link.up,
            },
        );
    };
    // Renamed in the pod so the node never sees the pod-side name; when the node name is taken in
    // the pod, the move itself names it (the kernel applies the name when the current one clashes).
    let renamed = pod_h
        .rename_link(
            index,
            &LinkRename {
                name: Some(&host_name),
                alias: Some(""),
                up: false,
            },
        )
        .is_ok();
    let moved = pod_h.move_link(
        index,
        node_ns,
        &LinkRename {
            name: Some(&host_name),
            alias: (!renamed).then_some(""),
            up: false,
        },
    );
    match moved {
        Ok(()) => Ok(MoveOut::Returned(host_name)),
        Err(e) => {
            if renamed {
                undo_rename();
            } else {
                // Moved under the pod-side name, then refused the node name: back into the pod.
                if let Ok(node) = Handle::current() {
                    if let Some(on_node) = find_moved(&node, &dev, &[ifname]) {
                        let _ = node.move_link(
                            on_node.link.index,
                            pod_ns,
                            &LinkRename {
                                name: Some(ifname),
                                alias: Some(&host_name),
                                up: false,
                            },
                        );
                    }
                }
                if let Ok(back) = pod_h.link_by_name(ifname) {
                    let _ = pod_h.rename_link(
                        back.index,
                        &LinkRename {
                            name: None,
                            alias: Some(&host_name),
                            up: dev.link.up,
                        },
                    );
                }
            }
            Err(Error::failed(format!(
                "failed to move {host_name:?} to hostNS: {e}"
            )))
        }
    }
}

/// DEL after the pod's namespace is gone: the kernel has already returned a physical device to the
/// initial namespace, down, under its pod-side name (or `dev<N>` when that was taken) and still
/// carrying its alias. The device ADD reported (by its MAC) gets its node name back. Best effort: a
/// device that is up (someone uses it) or whose name is taken meanwhile is left as it is.
pub fn rename_returned(node: &Handle, mac: &str) {
    let Ok(links) = node.link_details() else {
        return;
    };
    let returned = links.iter().find(|l| {
        !l.link.up
            && hw_addr_text(&l.hw_addr).eq_ignore_ascii_case(mac)
            && l.alias.as_deref().is_some_and(|a| a != l.link.name)
    });
    if let Some(dev) = returned {
        let _ = node.rename_link(
            dev.link.index,
            &LinkRename {
                name: dev.alias.as_deref(),
                alias: Some(""),
                up: false,
            },
        );
    }
}
