//! A pod interface's addresses and routes from a CNI result (the reference's `ConfigureIface`), for the
//! plugins that put one device into the pod (macvlan, host-device, tap): IPv6 enabled where needed,
//! addresses, up, IPv6 addresses settled, routes with the family's gateway by default; and the CHECK of
//! what that put there.

use crate::pod::{enable_ipv6_in, KeepAddrOnDown};
use twill_cni::{CniResult, Context, Error, Result};
use twill_kernel::{Handle, NetNs, RouteFilter};

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

/// CHECK, as the reference's `ValidateExpectedInterfaceIPs` and `ValidateExpectedRoute`: every address of
/// `prev` on the interface, and every route of `prev` in the pod, looked up in its own table when the
/// result names one (so CHECK passes on routes ADD put outside the main table).
pub fn check(h: &Handle, ifname: &str, index: u32, prev: &CniResult) -> Result<()> {
    let addrs = h
        .addresses(Some(index), None)
        .with_context(|| format!("failed to list addresses of {ifname:?}"))?;
    for ip in &prev.ips {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(Error::failed(format!(
                "Failed to match addr {} on interface {ifname}",
                ip.address
            )));
        }
    }
    let routes = h
        .routes(RouteFilter::default())
        .context("failed to list routes")?;
    for r in &prev.routes {
        let found = routes.iter().any(|k| {
            k.dst == r.dst
                && (r.gw.is_none() || k.gateway == r.gw)
                && !matches!(r.table, Some(t) if k.table != t)
        });
        if !found {
            return Err(Error::failed(format!(
                "Failed to match route {} via {:?}",
                r.dst, r.gw
            )));
        }
    }
    Ok(())
}
