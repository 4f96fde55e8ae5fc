//! CHECK (docs/cni-spec-notes.md §10.5): the attachment described by `prevResult` still exists as the bridge made it.
//! Tolerant of later chained plugins (extra routes and addresses are fine; a route recorded without gateway
//! matches whatever gateway it was installed with, plugins#886) and working in L2-only mode, where the
//! reference fails because it delegates CHECK to an empty IPAM type.

use crate::config::BridgeConf;
use std::path::Path;
use twill_cni::{CniResult, Context, Error, Interface, Result};
use twill_kernel::{Handle, Link, RouteFilter};

fn mac_matches(expected: &Option<String>, link: &Link) -> bool {
    match expected.as_deref() {
        None | Some("") => true,
        Some(m) => link
            .mac
            .is_some_and(|actual| actual.to_string().eq_ignore_ascii_case(m)),
    }
}

/// Everything but IPAM and masquerade.
pub fn check_kernel(
    conf: &BridgeConf,
    prev: &CniResult,
    host: &Handle,
    pod: &Handle,
    netns: &Path,
    ifname: &str,
) -> Result<()> {
    let sandbox = netns.display().to_string();
    let br_rec = prev.interfaces.iter().find(|i| i.name == conf.bridge);
    let cont_rec = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()));

    // The bridge.
    let br_rec: Interface = br_rec.cloned().unwrap_or(Interface {
        name: conf.bridge.clone(),
        ..Default::default()
    });
    let br = host
        .link_by_name(&br_rec.name)
        .map_err(|_| Error::failed(format!("Interface name {} not found", br_rec.name)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::failed(format!(
            "Interface {} does not have link type of bridge",
            br.name
        )));
    }
    if !mac_matches(&br_rec.mac, &br) {
        return Err(Error::failed(format!(
            "Bridge interface {} Mac doesn't match: {}",
            br.name,
            br_rec.mac.unwrap_or_default()
        )));
    }
    if br.promisc != conf.promisc {
        return Err(Error::failed(format!(
            "Bridge interface {} configured Promisc Mode {} doesn't match current state: {}",
            br.name, conf.promisc, br.promisc
        )));
    }

    // The container end.
    let cont_rec = cont_rec.ok_or_else(|| {
        Error::failed(format!(
            "Sandbox in prevResult doesn't match configured netns: {sandbox} (no interface {ifname} there)"
        ))
    })?;
    let cont = pod
        .link_by_name(ifname)
        .map_err(|_| Error::failed(format!("Interface name {ifname} not found")))?;
    if cont.kind.as_deref() != Some("veth") {
        return Err(Error::failed(format!(
            "Error: Container interface {ifname} not of type veth"
        )));
    }
    if !mac_matches(&cont_rec.mac, &cont) {
        return Err(Error::failed(format!(
            "Interface {ifname} Mac {} doesn't match container Mac: {}",
            cont_rec.mac.clone().unwrap_or_default(),
            cont.mac.map(|m| m.to_string()).unwrap_or_default()
        )));
    }

    // Some other recorded interface is the host end: the container end's peer, enslaved to the bridge.
    let mut host_found = false;
    for rec in &prev.interfaces {
        if rec.name == br.name
            || rec.name == ifname
            || rec.sandbox.as_deref().is_some_and(|s| !s.is_empty())
        {
            continue;
        }
        let Ok(link) = host.link_by_name(&rec.name) else {
            continue;
        };
        if link.kind.as_deref() != Some("veth")
            || Some(link.index) != cont.peer_index
            || link.peer_index != Some(cont.index)
            || link.master != Some(br.index)
        {
            continue;
        }
        if !mac_matches(&rec.mac, &link) {
            return Err(Error::failed(format!(
                "Interface {} Mac doesn't match: {} not found",
                rec.name,
                rec.mac.clone().unwrap_or_default()
            )));
        }
        host_found = true;
        break;
    }
    if !host_found {
        return Err(Error::failed(format!(
            "CNI veth created for bridge {} was not found",
            br.name
        )));
    }

    // Addresses and routes in the pod.
    let addrs = pod
        .addresses(Some(cont.index), None)
        .context("list container addresses")?;
    let routes = pod
        .routes(RouteFilter::default())
        .context("list container routes")?;
    for ip in &prev.ips {
        if let Some(i) = ip.interface {
            if prev.interfaces.get(i).is_some_and(|rec| rec.name != ifname) {
                continue;
            }
        }
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(Error::failed(format!(
                "Failed to match addr {} on interface {ifname}",
                ip.address
            )));
        }
        let subnet = ip.address.trunc();
        if !routes
            .iter()
            .any(|r| r.dst == subnet && r.oif == Some(cont.index))
        {
            return Err(Error::failed(format!(
                "Failed to find route to {subnet} on interface {ifname}"
            )));
        }
    }
    twill_veth::routes::check(&routes, &prev.routes)
}
