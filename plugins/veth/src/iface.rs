//! A pod interface's addresses and routes from a CNI result (the reference's `ConfigureIface`), for the
//! plugins that put one device into the pod (macvlan, host-device, tap): IPv6 enabled where needed,
//! addresses, up, IPv6 addresses settled, routes with the family's gateway by default.

use crate::pod::{enable_ipv6_in, KeepAddrOnDown};
use twill_cni::{CniResult, Context, Result};
use twill_kernel::{Handle, NetNs};

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
    let (v4gw, v6gw) = crate::routes::gateways(&result.ips);
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    if v6gw.is_some() {
        crate::pod::settle_ipv6(h, ifname, index)?;
    }
    crate::routes::add(h, ifname, index, &result.routes, v4gw, v6gw)
}
