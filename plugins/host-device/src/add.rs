//! ADD, transactional: the node's device moves into the pod (renamed to `CNI_IFNAME`, its node name in
//! its alias, up), optionally with the node device's own addresses, routes and rules
//! (`useInterfaceNetwork`), then IPAM's addresses and routes go on it; every step registers its undo
//! and a failure rolls back in reverse, which returns the device to the node under its name.
//! A DPDK-bound device has no netdev: nothing moves and IPAM's result is only reported.
//!
//! IPAM runs on its own thread from the moment the device is found, while the device moves (a namespace
//! move waits for the kernel's RCU grace periods); the device's errors still come first.

use crate::attach::{self, hw_addr_text};
use crate::config::HostDeviceConf;
use crate::locate;
use crate::netstate::NetworkState;
use std::cell::RefCell;
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};
use twill_veth::iface;

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
    let mut state = NetworkState::default();
    let found = if conf.dpdk {
        None
    } else {
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
        Some((node, h, dev))
    };

    // Declaration order is rollback order in reverse: the device returns to the node first, IPAM is
    // released last, so its addresses are never handed out again while the device still holds them.
    let ipam_state = RefCell::new(match conf.ipam_type.as_deref() {
        Some(t) => Some(ipam::spawn(t, Command::Add, req)?),
        None => None,
    });
    let mut ipam_undo = Undo::new();
    if let Some(t) = conf.ipam_type.as_deref() {
        let state = &ipam_state;
        ipam_undo.push(format!("release IPAM ({t})"), move || {
            // Still running: its outcome decides whether there is anything to release.
            let pending = state.borrow_mut().take();
            let added = match pending {
                Some(p) => p.wait_result(req).is_ok(),
                None => true,
            };
            if added {
                ipam::run(t, Command::Del, req)
            } else {
                Ok(())
            }
        });
    }
    let mut undo = Undo::new();
    let mut pod_h = None;
    if let Some((node, h, dev)) = found {
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

    let pending = ipam_state.borrow_mut().take();
    let Some(pending) = pending else {
        state.merge_into(&mut result);
        undo.commit();
        ipam_undo.commit();
        return Ok(result);
    };
    let ipam_result = match pending.wait_result(req) {
        Ok(r) => r,
        Err(e) => {
            // IPAM failed: nothing of it to release.
            ipam_undo.commit();
            return Err(e);
        }
    };
    if !conf.use_interface_network && ipam_result.ips.is_empty() {
        return Err(Error::failed("IPAM plugin returned missing IP config"));
    }
    iface::take_ipam(&mut result, ipam_result);
    if let Some((h, index)) = &pod_h {
        iface::configure(&pod, h, ifname, *index, &result)?;
    }
    state.merge_into(&mut result);
    result.dns = conf.dns;
    undo.commit();
    ipam_undo.commit();
    Ok(result)
}
