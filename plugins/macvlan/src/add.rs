//! ADD, transactional: the macvlan is created directly inside the pod (so its name is never taken on
//! the node), then IPAM runs; every step registers its undo and a failure rolls back in reverse.

use crate::config::{MacvlanConf, Resolved};
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_kernel::{sysctl, Handle, MacvlanSpec, NetNs};
use twill_veth::iface;

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = MacvlanConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    let node_h;
    // The master's namespace: the pod's own with `linkInContainer`.
    let master_h = if conf.link_in_container {
        &pod_h
    } else {
        node_h = Handle::current().context("netlink socket in the host namespace")?;
        &node_h
    };
    let master = Resolved::resolve(&conf, master_h)?;

    let spec = MacvlanSpec {
        name: ifname.to_string(),
        parent: master.master_index,
        mode: conf.mode,
        mtu: master.mtu,
        mac: conf.mac,
        netns: (!conf.link_in_container).then_some(&pod),
        bc_queue_len: conf.bc_queue_len,
    };
    master_h
        .create_macvlan(&spec)
        .map_err(|e| Error::failed(format!("failed to create macvlan: {e}")))?;
    let mut undo = Undo::new();
    undo.push(format!("delete {ifname}"), {
        let pod_h = &pod_h;
        move || iface::delete(pod_h, ifname).map_err(|e| Error::failed(e.to_string()))
    });
    let link = pod_h
        .link_by_name(ifname)
        .with_context(|| format!("failed to refetch macvlan {ifname:?}"))?;

    let mut result = CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            mac: link.mac.map(|m| m.to_string()),
            sandbox: Some(netns_path.display().to_string()),
            ..Default::default()
        }],
        ..Default::default()
    };

    match conf.ipam_type.as_deref() {
        Some(t) => {
            iface::add_ipam(req, t, &mut undo, &mut result)?;
            iface::arp_notify(&pod, &pod_h, ifname, link.index);
            // Best effort too: IPv6 neighbours learn it likewise.
            let _ = sysctl::write_in(&pod, &format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1");
            iface::configure(&pod, &pod_h, ifname, link.index, &result)?;
        }
        None => pod_h
            .set_link_up(link.index)
            .with_context(|| format!("failed to set {ifname:?} UP"))?,
    }
    result.dns = conf.dns;
    undo.commit();
    Ok(result)
}
