//! The container end (the reference's `setupContainerVeth` after the pair exists): IPAM's addresses and
//! routes, then the point-to-point shape — the subnet route the kernel added for each address is replaced by
//! a link route to the gateway and a route to the subnet via the gateway, so all traffic, even to other
//! addresses of the subnet, goes through the host.

use ipnet::IpNet;
use std::net::IpAddr;
use twill_cni::{CniResult, Context, Error, Result};
use twill_kernel::{AddressOptions, Handle, NetNs, Route, RouteScope};
use twill_veth::pod::{enable_ipv6_in, KeepAddrOnDown};

fn host_prefix(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => IpNet::new(ip, 32),
        IpAddr::V6(_) => IpNet::new(ip, 128),
    }
    .unwrap_or_else(|_| IpNet::from(ip))
}

/// Addresses, up, IPAM's routes, then the ptp routes. `result` carries IPAM's answer; every address has a
/// gateway (checked before anything was created).
pub fn configure(
    pod: &NetNs,
    h: &Handle,
    ifname: &str,
    index: u32,
    result: &CniResult,
) -> Result<()> {
    if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
        enable_ipv6_in(pod, ifname, KeepAddrOnDown::Required)?;
    }
    for ip in &result.ips {
        // The only other end of this link is the host's veth, so duplicate address detection can find
        // nothing; skipping it makes the address usable at once instead of after the reference's settle wait.
        let opts = AddressOptions {
            nodad: ip.address.addr().is_ipv6(),
            no_prefix_route: false,
        };
        h.add_address_with(index, ip.address, opts)
            .with_context(|| format!("failed to add IP addr {} to {ifname:?}", ip.address))?;
    }
    let (v4gw, v6gw) = twill_veth::routes::gateways(&result.ips);
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    twill_veth::routes::add(h, ifname, index, &result.routes, v4gw, v6gw)?;
    for ip in &result.ips {
        let gw = ip
            .gateway
            .ok_or_else(|| Error::failed(format!("no gateway for {}", ip.address)))?;
        let subnet = ip.address.trunc();
        let kernel_route = Route::new(subnet).dev(index);
        h.delete_route(&kernel_route)
            .with_context(|| format!("failed to delete route {subnet} dev {ifname}"))?;
        let to_gw = Route::new(host_prefix(gw))
            .dev(index)
            .scope(RouteScope::Link)
            .src(ip.address.addr());
        h.add_route(&to_gw)
            .with_context(|| format!("failed to add route {gw} dev {ifname}"))?;
        let via_gw = Route::new(subnet)
            .dev(index)
            .via(gw)
            .scope(RouteScope::Universe)
            .src(ip.address.addr());
        h.add_route(&via_gw)
            .with_context(|| format!("failed to add route {subnet} via {gw} dev {ifname}"))?;
    }
    Ok(())
}
