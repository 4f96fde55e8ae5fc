//! What the plugins that put one device into the pod (macvlan, host-device, tap) do alike: IPAM's result
//! taken as the device's, the device's addresses and routes from a CNI result (the reference's
//! `ConfigureIface`: IPv6 enabled where needed, addresses, up, IPv6 addresses settled, routes with the
//! family's gateway by default), the device deleted by DEL or a rollback, and CHECK: its start (netns,
//! IPAM, prevResult, the recorded interface) and the recorded addresses and routes. STATUS and GC are
//! IPAM's alone, as these plugins keep no state on the node.

use crate::pod::{enable_ipv6_in, KeepAddrOnDown};
use std::path::Path;
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_ipam::provider as ipam;
use twill_kernel::{sysctl, Handle, NetNs, RouteFilter};

/// How a plugin's reference words CHECK's errors: the same texts, macvlan's starting in lower case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wording {
    Capitalised,
    Lowercase,
}

impl Wording {
    pub fn error(self, text: &str) -> Error {
        let mut chars = text.chars();
        match (self, chars.next()) {
            (Wording::Lowercase, Some(first)) => {
                Error::failed(format!("{}{}", first.to_lowercase(), chars.as_str()))
            }
            _ => Error::failed(text),
        }
    }
}

/// CHECK's start, in the reference's order: the pod's namespace opened, IPAM's CHECK (when the config
/// names IPAM), then the prevResult, which is required.
pub fn check_start(
    req: &Request,
    ipam_type: Option<&str>,
    wording: Wording,
) -> Result<(NetNs, CniResult)> {
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    if let Some(t) = ipam_type {
        ipam::run(t, Command::Check, req)?;
    }
    let prev = req
        .config
        .prev_result()?
        .ok_or_else(|| wording.error("Required prevResult missing"))?;
    Ok((pod, prev))
}

/// The interface `prev` records for `ifname` in the sandbox `netns`, if any.
pub fn find_recorded<'a>(prev: &'a CniResult, ifname: &str, netns: &Path) -> Option<&'a Interface> {
    let sandbox = netns.display().to_string();
    prev.interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
}

/// CHECK: the interface `prev` records for `ifname` in the sandbox `netns`, which must be there.
pub fn recorded<'a>(
    prev: &'a CniResult,
    ifname: &str,
    netns: &Path,
    wording: Wording,
) -> Result<&'a Interface> {
    find_recorded(prev, ifname, netns).ok_or_else(|| {
        wording.error(&format!(
            "Sandbox in prevResult  doesn't match configured netns: {}",
            netns.display()
        ))
    })
}

/// IPAM's addresses and routes become `result`'s, on its one interface (index 0).
pub fn take_ipam(result: &mut CniResult, ipam_result: CniResult) {
    result.ips = ipam_result.ips;
    result.routes = ipam_result.routes;
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
}

/// ADD's IPAM step for the device: IPAM type `t` run, its release registered in `undo`, its result taken
/// into `result`; a result without addresses is an error, as in the reference.
pub fn add_ipam<'a>(
    req: &'a Request,
    t: &'a str,
    undo: &mut Undo<'a>,
    result: &mut CniResult,
) -> Result<()> {
    let ipam_result = ipam::spawn(t, Command::Add, req)?.wait_result(req)?;
    undo.push(format!("release IPAM ({t})"), move || {
        ipam::run(t, Command::Del, req)
    });
    if ipam_result.ips.is_empty() {
        return Err(Error::failed("IPAM plugin returned missing IP config"));
    }
    take_ipam(result, ipam_result);
    Ok(())
}

/// Best effort, as the reference: neighbours learn the device's MAC as soon as it is up.
pub fn arp_notify(pod: &NetNs, h: &Handle, ifname: &str, index: u32) {
    if h.enable_arp_notify(index).is_err() {
        let _ = sysctl::write_in(pod, &format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
    }
}

/// Deletes the pod's `ifname`; a device already gone is success.
pub fn delete(h: &Handle, ifname: &str) -> twill_kernel::Result<()> {
    match h.delete_link_by_name(ifname) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// DEL of the device: deleted in the pod; without the netns or the device there is nothing to delete.
pub fn delete_in_pod(req: &Request, ifname: &str) -> Result<()> {
    match crate::pod::socket_for_del(req.env.netns.as_deref())? {
        Some(h) => delete(&h, ifname)
            .map_err(|e| Error::failed(format!("failed to delete {ifname:?}: {e}"))),
        None => Ok(()),
    }
}

/// DEL's IPAM release (when the config names IPAM) on its own thread while `remove` takes the device out
/// of the pod (a namespace move or a tap's deletion waits for the kernel's RCU grace periods); IPAM's
/// error wins, as in the reference, which releases it first.
pub fn release_ipam_while(
    req: &Request,
    ipam_type: Option<&str>,
    remove: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let pending = match ipam_type {
        Some(t) => Some(ipam::spawn(t, Command::Del, req)?),
        None => None,
    };
    let removed = remove();
    if let Some(p) = pending {
        p.wait()?;
    }
    removed
}

/// STATUS or GC (`command`): IPAM's, when the config names one.
pub fn ipam_only(command: Command, req: &Request) -> Result<()> {
    match req.config.ipam_type() {
        Some(t) => ipam::run(t, command, req),
        None => Ok(()),
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
