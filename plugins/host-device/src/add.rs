//! ADD, transactional: the node's device moves into the pod (renamed to `CNI_IFNAME`, its node name in
//! its alias, up), optionally with the node device's own addresses, routes and rules
//! (`useInterfaceNetwork`), then IPAM's addresses and routes go on it; every step registers its undo
//! and a failure rolls back in reverse, which returns the device to the node under its name.
//! A DPDK-bound device has no netdev: nothing moves and IPAM's result is only reported.

use crate::attach::{self, hw_addr_text};
use crate::config::HostDeviceConf;
use crate::locate;
use crate::netstate::NetworkState;
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = HostDeviceConf::load(req)?;
    if conf.use_interface_network && conf.dpdk {
        return Err(Error::failed(
            "useInterfaceNetwork is not supported for dpdk-bound devices",
        ));
    }
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    let sandbox = netns_path.display().to_string();
    let mut result = CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            sandbox: Some(sandbox),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut undo = Undo::new();
    let mut pod_h = None;
    let mut state = NetworkState::default();
    if !conf.dpdk {
        let node = Handle::current().context("netlink socket in the host namespace")?;
        let h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
        let dev = locate::find(&node, &conf.selector).map_err(|e| {
            Error::new(
                e.code,
                format!("failed to find host device: {}", e.msg),
                e.details,
            )
        })?;
        if conf.use_interface_network {
            state = NetworkState::capture(&node, &dev)?;
        }
        let moved = attach::move_in(&node, &pod, &h, &dev, ifname)?;
        let node_ns = NetNs::current().context("failed to open the host namespace")?;
        undo.push(format!("return {ifname} to the node"), {
            let (pod, h, node) = (&pod, h.clone(), node.clone());
            let was_up = dev.link.up;
            move || {
                // Unlike DEL, the device's earlier state is known here: it goes back as it was.
                if let attach::MoveOut::Returned(name) =
                    attach::move_out(pod, &h, &node_ns, ifname)?
                {
                    if was_up {
                        let back = node
                            .link_by_name(&name)
                            .context("failed to find the returned device")?;
                        node.set_link_up(back.index)
                            .context("failed to set the returned device up")?;
                    }
                }
                Ok(())
            }
        });
        let mac = hw_addr_text(&moved.hw_addr);
        result.interfaces[0].mac = Some(mac).filter(|m| !m.is_empty());
        if conf.use_interface_network {
            state.apply(&h, ifname, moved.link.index)?;
        }
        pod_h = Some((h, moved.link.index));
    }

    let Some(t) = conf.ipam_type.as_deref() else {
        state.merge_into(&mut result);
        undo.commit();
        return Ok(result);
    };
    let ipam_result = ipam::spawn(t, Command::Add, req)?.wait_result(req)?;
    undo.push(format!("release IPAM ({t})"), move || {
        ipam::run(t, Command::Del, req)
    });
    if !conf.use_interface_network && ipam_result.ips.is_empty() {
        return Err(Error::failed("IPAM plugin returned missing IP config"));
    }
    result.ips = ipam_result.ips;
    result.routes = ipam_result.routes;
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
    if let Some((h, index)) = &pod_h {
        twill_veth::iface::configure(&pod, h, ifname, *index, &result)?;
    }
    state.merge_into(&mut result);
    result.dns = conf.dns;
    undo.commit();
    Ok(result)
}
