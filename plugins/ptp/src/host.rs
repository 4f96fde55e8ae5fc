//! The host end (the reference's `setupHostVeth`): the gateway address of each pod address as a /32 (/128)
//! on the veth, and a host-scoped route to the pod address through it.

use std::net::IpAddr;
use twill_cni::{CniResult, Error, Result};
use twill_kernel::{sysctl, Handle, IpNet, Route, RouteScope};

fn host_prefix(ip: IpAddr) -> Result<IpNet> {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNet::new(ip, len).map_err(|e| Error::failed(format!("{ip}/{len}: {e}")))
}

pub fn configure(host: &Handle, index: u32, name: &str, result: &CniResult) -> Result<()> {
    for ip in &result.ips {
        let gw = ip
            .gateway
            .ok_or_else(|| Error::failed(format!("no gateway for {}", ip.address)))?;
        let gw_net = host_prefix(gw)?;
        match host.add_address(index, gw_net) {
            Ok(()) => {}
            Err(e) => {
                return Err(Error::failed(format!(
                    "failed to add IP addr {gw_net} to veth {name:?}: {e}"
                )))
            }
        }
        let pod_net = host_prefix(ip.address.addr())?;
        let route = Route::new(pod_net).dev(index).scope(RouteScope::Host);
        match host.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(Error::failed(format!("failed to add route on host: {e}"))),
        }
    }
    Ok(())
}

/// IP forwarding on the host for each family the pod has an address of (the reference's `EnableForward`).
pub fn enable_forwarding(result: &CniResult) -> Result<()> {
    let v4 = result.ips.iter().any(|i| i.address.addr().is_ipv4());
    let v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
    for (on, key) in [
        (v4, "net/ipv4/ip_forward"),
        (v6, "net/ipv6/conf/all/forwarding"),
    ] {
        if on {
            sysctl::write(key, "1")
                .map_err(|e| Error::failed(format!("Could not enable IP forwarding: {e}")))?;
        }
    }
    Ok(())
}
