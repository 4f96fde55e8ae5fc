//! ADD, transactional: the tap is created directly inside the pod under its final name (persistent,
//! owned as configured), given its MTU and MAC, made a port of `bridge`, then IPAM runs; every step
//! registers its undo and a failure rolls back in reverse.
//!
//! Device flags as the reference leaves them: with both `owner` and `group` it creates the tap with
//! a virtio-net header and packet information (unless multi-queue), otherwise (through `ip tuntap`)
//! with neither. Unlike the reference in the first case, `mtu` and `mac` are always applied.

use crate::config::TapConf;
use crate::selinux;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_kernel::{Handle, LinkChange, NetNs, TapSpec};
use twill_veth::iface;

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = TapConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    let h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;

    let owned = conf.owner.is_some() && conf.group.is_some() && conf.selinux_context.is_none();
    let spec = TapSpec {
        name: ifname.to_string(),
        multi_queue: conf.multi_queue,
        packet_info: owned && !conf.multi_queue,
        vnet_hdr: owned,
        owner: conf.owner,
        group: conf.group,
    };
    match &conf.selinux_context {
        Some(label) => selinux::create_labelled(&pod, label, &spec)?,
        None => twill_kernel::tuntap::create_tap(&pod, &spec).map_err(|e| {
            if e.errno() == Some(libc::EBUSY) {
                Error::failed(format!("failed to create tap: {ifname:?} already exists"))
            } else {
                Error::failed(format!("failed to create tap: {e}"))
            }
        })?,
    }
    let mut undo = Undo::new();
    undo.push(format!("delete {ifname}"), {
        let h = &h;
        move || iface::delete(h, ifname).map_err(|e| Error::failed(e.to_string()))
    });
    let link = h
        .link_by_name(ifname)
        .with_context(|| format!("failed to refetch tap {ifname:?}"))?;
    let change = LinkChange {
        mtu: conf.mtu,
        mac: conf.mac,
        ..Default::default()
    };
    h.change_link(link.index, &change)
        .with_context(|| format!("failed to set the MTU and MAC of tap {ifname:?}"))?;
    if let Some(bridge) = &conf.bridge {
        let br = h
            .link_by_name(bridge)
            .map_err(|e| Error::failed(format!("failed to get bridge {bridge}: {e}")))?;
        h.set_link_master(link.index, Some(br.index)).map_err(|e| {
            Error::failed(format!(
                "failed to set tap {ifname} as a port of bridge {bridge}: {e}"
            ))
        })?;
    }
    h.set_link_up(link.index)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    let mac = h
        .link_by_index(link.index)
        .with_context(|| format!("failed to refetch tap {ifname:?}"))?
        .mac;

    let mut result = CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            mac: mac.map(|m| m.to_string()),
            sandbox: Some(netns_path.display().to_string()),
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(t) = conf.ipam_type.as_deref() {
        iface::add_ipam(req, t, &mut undo, &mut result)?;
        iface::arp_notify(&pod, &h, ifname, link.index);
        iface::configure(&pod, &h, ifname, link.index, &result)?;
    }
    result.dns = conf.dns;
    undo.commit();
    Ok(result)
}
