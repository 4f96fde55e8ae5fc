//! The `sbr` (source-based routing) CNI meta plugin: for each address the previous plugin gave the
//! interface, a policy rule `from <address> lookup <table>` and a table of its own holding the
//! interface's routes, so replies leave through the interface their source belongs to.
//!
//! - ADD: in the pod, under a lock on the namespace file (the reference's lock, so both never interleave
//!   in one pod); with a fixed `table` only the rules. Rolls back on failure.
//! - DEL: removes the rules from the interface's addresses and the routes of their tables through it;
//!   succeeds when the namespace or the interface is gone.
//! - CHECK: every address has its rule (the reference checks nothing).

mod add;
pub mod config;

use config::SbrConf;
use std::net::IpAddr;
use std::path::Path;
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, IpConfig, Plugin, Request, Result};
use twill_kernel::{Handle, NetNs, Route, RouteFilter};

#[derive(Debug, Default)]
pub struct Sbr;

/// The addresses of the previous result that belong to `ifname`: those naming its interface, and those
/// naming none (or an index out of range), as the reference reads them.
pub fn addresses_of(prev: &CniResult, ifname: &str) -> Result<Vec<IpConfig>> {
    if prev.ips.is_empty() {
        return Err(Error::failed(format!(
            "No IP addresses supplied on interface: {ifname}"
        )));
    }
    Ok(prev
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => prev.interfaces.get(i).is_none_or(|itf| itf.name == ifname),
            None => true,
        })
        .cloned()
        .collect())
}

fn prev_result(req: &Request) -> Result<CniResult> {
    req.config
        .prev_result()?
        .ok_or_else(|| Error::failed("This plugin must be called as chained plugin"))
}

fn pod_handle(path: &Path) -> Result<Handle> {
    let pod =
        NetNs::open(path).with_context(|| format!("failed to open netns {:?}", path.display()))?;
    Handle::in_netns(&pod).context("netlink socket in the pod namespace")
}

impl Plugin for Sbr {
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = SbrConf::load(req)?;
        let prev = prev_result(req)?;
        let ifname = req.ifname()?.as_str();
        let ips = addresses_of(&prev, ifname)?;
        let netns = req.netns()?;
        // The reference locks the namespace file too, so ours and theirs never interleave in one pod.
        let _lock = twill_cni::lock::FileLock::existing(netns)?;
        let h = pod_handle(netns)?;
        match conf.table {
            Some(table) => add::rules_only(&h, &ips, table)?,
            None => add::with_tables(&h, &ips, ifname, &conf)?,
        }
        Ok(prev)
    }

    /// Never fails on the pod's state: a namespace or interface that is gone has no rules left to remove.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = SbrConf::load(req)?;
        let ifname = req.ifname()?.as_str();
        let Some(netns) = req
            .env
            .netns
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        else {
            return Ok(());
        };
        let Ok(pod) = NetNs::open(netns) else {
            return Ok(());
        };
        let _lock = twill_cni::lock::FileLock::existing(netns).ok();
        // A path that is not a namespace (any more) holds no rules of ours.
        let Ok(h) = Handle::in_netns(&pod) else {
            return Ok(());
        };
        tidy(&h, ifname, conf.table)
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = SbrConf::load(req)?;
        let prev = prev_result(req)?;
        let ifname = req.ifname()?.as_str();
        let ips = addresses_of(&prev, ifname)?;
        let h = pod_handle(req.netns()?)?;
        let rules = h
            .rules(None)
            .map_err(|e| Error::failed(format!("Failed to list all rules: {e}")))?;
        for ip in &ips {
            let addr = ip.address.addr();
            let found = rules.iter().any(|r| {
                r.lookup
                    && r.src.is_some_and(|s| s.addr() == addr)
                    && conf.table.is_none_or(|t| t == r.table)
            });
            if !found {
                return Err(Error::failed(format!(
                    "sbr: no rule routes traffic from {addr} on {ifname}"
                )));
            }
        }
        Ok(())
    }

    /// Ready whenever installed: no daemon, no state outside the pod.
    fn status(&self, req: &Request) -> Result<()> {
        SbrConf::load(req).map(|_| ())
    }
}

/// Deletes the rules whose source is an address of `ifname` (of `table` only, when fixed), and the routes
/// through `ifname` of the tables they named, unless the table is the user's. Keeps going past failures
/// and reports the last one.
fn tidy(h: &Handle, ifname: &str, table: Option<u32>) -> Result<()> {
    let link = match h.link_by_name(ifname) {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(Error::failed(format!("Failed to get link {ifname}: {e}"))),
    };
    let addrs: Vec<IpAddr> = h
        .addresses(Some(link.index), None)
        .map_err(|e| Error::failed(format!("Failed to list all addrs: {e}")))?
        .iter()
        .map(|a| a.net.addr())
        .collect();
    let rules = h
        .rules(None)
        .map_err(|e| Error::failed(format!("Failed to list all rules to tidy: {e}")))?;
    let mut last_error = None;
    let mut tables = Vec::new();
    for rule in rules.iter().filter(|r| {
        r.src.is_some_and(|s| addrs.contains(&s.addr())) && table.is_none_or(|t| t == r.table)
    }) {
        match h.delete_rule(rule) {
            Ok(()) => tables.push(rule.table),
            Err(e) if e.is_not_found() => {}
            Err(e) => last_error = Some(Error::failed(format!("Failed to delete rule {e}"))),
        }
    }
    if table.is_none() {
        for t in tables {
            if let Err(e) = delete_routes(h, t, link.index) {
                last_error = Some(e);
            }
        }
    }
    last_error.map_or(Ok(()), Err)
}

fn delete_routes(h: &Handle, table: u32, oif: u32) -> Result<()> {
    let routes: Vec<Route> = h
        .routes(RouteFilter {
            family: None,
            table: Some(table),
            oif: Some(oif),
        })
        .map_err(|e| Error::failed(format!("Failed to list routes of table {table}: {e}")))?;
    for r in &routes {
        match h.delete_route(r) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::failed(format!("Failed to delete route: {e}"))),
        }
    }
    Ok(())
}
