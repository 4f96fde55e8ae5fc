//! CHECK: the attachment recorded in `prevResult` still exists as ADD made it — the container end (a veth
//! with the recorded MAC and addresses, IPAM's routes), and, beyond the reference, the host end with its
//! host route to each pod address.

use std::path::Path;
use twill_cni::{CniResult, Context, Error, Result};
use twill_kernel::{Handle, IpNet, RouteFilter};

fn mac_matches(expected: &Option<String>, actual: Option<twill_kernel::MacAddr>) -> bool {
    match expected.as_deref() {
        None | Some("") => true,
        Some(m) => actual.is_some_and(|a| a.to_string().eq_ignore_ascii_case(m)),
    }
}

pub fn check_kernel(
    prev: &CniResult,
    host: &Handle,
    pod: &Handle,
    netns: &Path,
    ifname: &str,
) -> Result<()> {
    let sandbox = netns.display().to_string();
    let rec = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            Error::failed(format!(
                "Sandbox in prevResult doesn't match configured netns: {sandbox}"
            ))
        })?;
    let cont = pod.link_by_name(ifname).map_err(|_| {
        Error::failed(format!(
            "ptp: Container Interface name in prevResult: {ifname} not found"
        ))
    })?;
    if cont.kind.as_deref() != Some("veth") {
        return Err(Error::failed(format!(
            "Error: Container interface {ifname} not of type veth/p2p"
        )));
    }
    if !mac_matches(&rec.mac, cont.mac) {
        return Err(Error::failed(format!(
            "ptp: Interface {ifname} Mac {} doesn't match container Mac: {}",
            rec.mac.clone().unwrap_or_default(),
            cont.mac.map(|m| m.to_string()).unwrap_or_default()
        )));
    }

    let addrs = pod
        .addresses(Some(cont.index), None)
        .context("list container addresses")?;
    let own_ips = prev.ips.iter().filter(|ip| {
        ip.interface
            .and_then(|i| prev.interfaces.get(i))
            .is_none_or(|r| r.name == ifname)
    });
    for ip in own_ips.clone() {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(Error::failed(format!(
                "Failed to match addr {} on interface {ifname}",
                ip.address
            )));
        }
    }
    let routes = pod
        .routes(RouteFilter::default())
        .context("list container routes")?;
    twill_veth::routes::check(&routes, &prev.routes)?;

    // The host end: the container end's peer among the recorded host-side interfaces.
    let host_end = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .filter_map(|i| host.link_by_name(&i.name).ok().map(|l| (i, l)))
        .find(|(_, l)| l.kind.as_deref() == Some("veth") && Some(l.index) == cont.peer_index);
    let Some((host_rec, host_link)) = host_end else {
        return Err(Error::failed(format!(
            "ptp: the host end of {ifname} recorded in prevResult was not found"
        )));
    };
    if !mac_matches(&host_rec.mac, host_link.mac) {
        return Err(Error::failed(format!(
            "ptp: Interface {} Mac {} doesn't match: {}",
            host_link.name,
            host_rec.mac.clone().unwrap_or_default(),
            host_link.mac.map(|m| m.to_string()).unwrap_or_default()
        )));
    }
    let host_routes = host
        .routes(RouteFilter {
            oif: Some(host_link.index),
            ..Default::default()
        })
        .context("list host routes")?;
    for ip in own_ips {
        let addr = ip.address.addr();
        let want = IpNet::from(addr);
        if !host_routes.iter().any(|r| r.dst == want) {
            return Err(Error::failed(format!(
                "ptp: no host route to {addr} via {}",
                host_link.name
            )));
        }
    }
    Ok(())
}
