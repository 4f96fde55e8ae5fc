//! The routes of a CNI result on the pod's interface: installed by ADD, verified by CHECK.

use std::net::IpAddr;

use twill_cni::{Error, IpConfig, Result, Route as CniRoute};
use twill_kernel::{Handle, Route, RouteScope};

/// The first gateway of each family among a result's addresses (`v4gw`, `v6gw`): where [`add`] sends a
/// route that names none, as the reference's `ConfigureIface`.
pub fn gateways(ips: &[IpConfig]) -> (Option<IpAddr>, Option<IpAddr>) {
    let first = |v4: bool| {
        ips.iter()
            .filter_map(|ip| ip.gateway)
            .find(|g| g.is_ipv4() == v4)
    };
    (first(true), first(false))
}

/// Installs `routes` on device `index` (`ifname`) of the pod; a route without a gateway goes via the
/// first gateway of its family (`v4gw`, `v6gw`), as the reference's `ConfigureIface`.
pub fn add(
    h: &Handle,
    ifname: &str,
    index: u32,
    routes: &[CniRoute],
    v4gw: Option<IpAddr>,
    v6gw: Option<IpAddr>,
) -> Result<()> {
    for r in routes {
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
            // The same route listed twice: the reference appends (ECMP), which for an identical next hop
            // is the same route.
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

/// CHECK: every route of the previous result is among the pod's routes (`installed`), with its
/// gateway and table when the result names them.
pub fn check(installed: &[Route], expected: &[CniRoute]) -> Result<()> {
    for r in expected {
        let found = installed.iter().any(|k| {
            k.dst == r.dst.trunc()
                && (r.gw.is_none() || r.gw == k.gateway)
                && (r.table.is_none() || r.table == Some(k.table))
        });
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(Error::failed(format!(
                "Failed to find a route for {}{via} in the container",
                r.dst
            )));
        }
    }
    Ok(())
}
