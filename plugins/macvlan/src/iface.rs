//! The container interface's addresses and routes (the reference's `ConfigureIface`): IPv6 enabled
//! where needed, addresses, up, IPv6 addresses settled, routes with the family's gateway by default.

use twill_cni::{CniResult, Context, Result};
use twill_kernel::{Handle, NetNs};
use twill_veth::pod::{enable_ipv6_in, KeepAddrOnDown};

pub fn configure(
    pod: &NetNs,
    h: &Handle,
    ifname: &str,
    index: u32,
    result: &CniResult,
) -> Result<()> {
    if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
        enable_ipv6_in(pod, ifname, KeepAddrOnDown::BestEffort)?;
    }
    for ip in &result.ips {
        h.add_address(index, ip.address)
            .with_context(|| format!("failed to add IP addr {} to {ifname:?}", ip.address))?;
    }
    let (v4gw, v6gw) = twill_veth::routes::gateways(&result.ips);
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    if v6gw.is_some() {
        twill_veth::pod::settle_ipv6(h, ifname, index)?;
    }
    twill_veth::routes::add(h, ifname, index, &result.routes, v4gw, v6gw)
}
