//! A pod interface's addresses and routes from a CNI result (the reference's `ConfigureIface`), for the
//! plugins that put one device into the pod (macvlan, host-device, tap): IPv6 enabled where needed,
//! addresses, up, IPv6 addresses settled, routes with the family's gateway by default.

use twill_cni::{CniResult, Context, Result};
use twill_kernel::{sysctl, Handle, NetNs};

/// IPv6 must be enabled on `lo` and the interface before an IPv6 address is added.
fn enable_ipv6(pod: &NetNs, ifname: &str) -> Result<()> {
    for dev in ["lo", ifname] {
        let key = format!("net/ipv6/conf/{dev}/disable_ipv6");
        if let Ok(v) = sysctl::read_in(pod, &key) {
            if v != "0" {
                sysctl::write_in(pod, &key, "0")
                    .with_context(|| format!("failed to enable IPv6 for interface {dev:?}"))?;
            }
        }
    }
    let _ = sysctl::write_in(
        pod,
        &format!("net/ipv6/conf/{ifname}/keep_addr_on_down"),
        "1",
    );
    Ok(())
}

pub fn configure(
    pod: &NetNs,
    h: &Handle,
    ifname: &str,
    index: u32,
    result: &CniResult,
) -> Result<()> {
    if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
        enable_ipv6(pod, ifname)?;
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
