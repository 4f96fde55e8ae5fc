//! The container interface's addresses and routes (the reference's `ConfigureIface`): IPv6 enabled
//! where needed, addresses, up, IPv6 addresses settled, routes with the family's gateway by default.

use std::net::IpAddr;
use std::time::{Duration, Instant};
use twill_cni::{CniResult, Context, Error, Result};
use twill_kernel::{sysctl, Handle, NetNs, Route, RouteScope};

/// How long IPv6 duplicate address detection may take (the reference: 10 s).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Wait until no IPv6 address of the interface is tentative; a failed DAD is an error.
fn settle(h: &Handle, ifname: &str, index: u32) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let addrs = h
            .addresses(Some(index), Some(twill_kernel::Family::V6))
            .with_context(|| format!("list addresses of {ifname:?}"))?;
        if let Some(bad) = addrs.iter().find(|a| a.dadfailed) {
            return Err(Error::failed(format!(
                "duplicate address detection failed for {} on {ifname:?}",
                bad.net
            )));
        }
        if !addrs.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            return Err(Error::failed(format!(
                "addresses of {ifname:?} still tentative after {SETTLE_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
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
    let mut v4gw = None;
    let mut v6gw = None;
    for ip in &result.ips {
        h.add_address(index, ip.address)
            .with_context(|| format!("failed to add IP addr {} to {ifname:?}", ip.address))?;
        match ip.gateway {
            Some(g @ IpAddr::V4(_)) if v4gw.is_none() => v4gw = Some(g),
            Some(g @ IpAddr::V6(_)) if v6gw.is_none() => v6gw = Some(g),
            _ => {}
        }
    }
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} UP"))?;
    if v6gw.is_some() {
        settle(h, ifname, index)?;
    }
    for r in &result.routes {
        let gw = r.gw.or(if r.dst.addr().is_ipv4() { v4gw } else { v6gw });
        let mut route = Route::new(r.dst).dev(index);
        if let Some(gw) = gw {
            route = route.via(gw);
        }
        if let Some(p) = r.priority {
            route = route.metric(p);
        }
        if let Some(t) = r.table {
            route = route.table(t);
        }
        if let Some(s) = r.scope {
            route = route.scope(RouteScope::from(s));
        }
        match h.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => {
                let via = gw.map(|g| g.to_string()).unwrap_or_default();
                return Err(Error::failed(format!(
                    "failed to add route '{} via {via} dev {ifname}': {e}",
                    r.dst
                )));
            }
        }
    }
    Ok(())
}
