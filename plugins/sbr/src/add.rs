//! ADD inside the pod: per address of the interface a rule `from <address> lookup <table>` and a table
//! holding the interface's routes (its default route via the gateway first), the routes then removed from
//! the main table, as the reference does. Each address gets the first table from 100 up that no rule
//! names and no route lives in. Unlike the reference, a failure undoes every rule and route already
//! changed, so the pod is left as it was.

use crate::config::{SbrConf, FIRST_TABLE};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use twill_cni::{Error, IpConfig, Result, Undo};
use twill_kernel::{Handle, Route, RouteFilter, RouteScope, Rule, TABLE_MAIN};

/// `from <address>` rules pointing at `table`, nothing else (a fixed `table` from the config).
pub fn rules_only(h: &Handle, ips: &[IpConfig], table: u32) -> Result<()> {
    let mut undo = Undo::new();
    for ip in ips {
        add_rule(h, &mut undo, ip.address.addr(), table)?;
    }
    undo.commit();
    Ok(())
}

fn add_rule<'a>(h: &'a Handle, undo: &mut Undo<'a>, src: IpAddr, table: u32) -> Result<()> {
    let rule = Rule::from_source(src, table);
    h.add_rule(&rule)
        .map_err(|e| Error::failed(format!("Failed to add rule: {e}")))?;
    undo.push(
        format!("delete rule from {src} lookup {table}"),
        move || {
            h.delete_rule(&rule)
                .map_err(|e| Error::failed(e.to_string()))
        },
    );
    Ok(())
}

/// Tables in use (named by a rule or holding a route), and the routes of the main table through `oif`: one
/// dump of every route serves both, so ADD does not list the main table a second time.
fn used_tables_and_main_routes(h: &Handle, oif: u32) -> Result<(BTreeSet<u32>, Vec<Route>)> {
    let rules = h
        .rules(None)
        .map_err(|e| Error::failed(format!("Failed to list all rules: {e}")))?;
    let routes = h
        .routes(RouteFilter::default())
        .map_err(|e| Error::failed(format!("Failed to list all routes: {e}")))?;
    let used = rules
        .iter()
        .map(|r| r.table)
        .chain(routes.iter().map(|r| r.table))
        .collect();
    let main = routes
        .into_iter()
        .filter(|r| r.table == TABLE_MAIN && r.oif == Some(oif))
        .collect();
    Ok((used, main))
}

fn next_free(used: &BTreeSet<u32>, mut candidate: u32) -> Result<u32> {
    while used.contains(&candidate) {
        candidate = candidate
            .checked_add(1)
            .ok_or_else(|| Error::failed("no free routing table left"))?;
    }
    Ok(candidate)
}

/// The route as it would be in `table`, without the flags the kernel sets (as the reference copies it).
fn in_table(r: &Route, table: u32) -> Route {
    let mut copy = r.clone();
    copy.table = table;
    copy.onlink = false;
    copy
}

fn default_dst(ip: &IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
    .unwrap_or_default()
}

/// A route that belongs to the address's table: its source or gateway is in the address's subnet, or it
/// has neither (a plain device route).
fn belongs(r: &Route, subnet: &IpNet) -> bool {
    r.src.is_some_and(|s| subnet.contains(&s))
        || r.gateway.is_some_and(|g| subnet.contains(&g))
        || (r.src.is_none() && r.gateway.is_none())
}

pub fn with_tables(h: &Handle, ips: &[IpConfig], ifname: &str, conf: &SbrConf) -> Result<()> {
    let link = h
        .link_by_name(ifname)
        .map_err(|e| Error::failed(format!("Cannot find network interface {ifname}: {e}")))?;
    let index = link.index;
    let (used, main_routes) = used_tables_and_main_routes(h, index)?;

    let mut undo = Undo::new();
    let mut table = next_free(&used, FIRST_TABLE)?;
    for ip in ips {
        let addr = ip.address.addr();
        add_rule(h, &mut undo, addr, table)?;
        let gateway = conf.gateway_for(&addr).or(ip.gateway);
        if let Some(gw) = gateway {
            let route = Route::new(default_dst(&addr))
                .via(gw)
                .dev(index)
                .table(table);
            h.add_route(&route)
                .map_err(|e| Error::failed(format!("Failed to add default route to {gw}: {e}")))?;
            undo.push(
                format!("delete default route of table {table}"),
                move || {
                    h.delete_route(&route)
                        .map_err(|e| Error::failed(e.to_string()))
                },
            );
        }
        let subnet = ip.address.trunc();
        for r in main_routes.iter().filter(|r| belongs(r, &subnet)) {
            let copy = in_table(r, table);
            // Replace: the default route just added may be among them.
            h.replace_route(&copy)
                .map_err(|e| Error::failed(format!("Failed to readd route: {e}")))?;
            undo.push(
                format!("delete {} from table {table}", copy.dst),
                move || match h.delete_route(&copy) {
                    Err(e) if !e.is_not_found() => Err(Error::failed(e.to_string())),
                    _ => Ok(()),
                },
            );
        }
        table = next_free(&used, table.saturating_add(1))?;
    }

    if conf.add_source_hints {
        source_hints(h, &mut undo, ips, index, &main_routes);
    } else {
        // Removed only now: several addresses of one subnet each copy the same routes.
        for r in &main_routes {
            h.delete_route(r)
                .map_err(|e| Error::failed(format!("Failed to delete route: {e}")))?;
            let back = r.clone();
            undo.push(format!("restore {} in the main table", r.dst), move || {
                h.add_route(&back).map_err(|e| Error::failed(e.to_string()))
            });
        }
    }
    undo.commit();
    Ok(())
}

/// The subnet routes stay in the main table with the address as preferred source, so traffic without a
/// chosen source still leaves by destination; the other routes of the interface leave the main table.
/// Failures here are warnings, as in the reference: the rules and tables are what was asked for.
fn source_hints<'a>(
    h: &'a Handle,
    undo: &mut Undo<'a>,
    ips: &[IpConfig],
    index: u32,
    main_routes: &[Route],
) {
    for ip in ips {
        let subnet = ip.address.trunc();
        let route = Route::new(subnet)
            .dev(index)
            .src(ip.address.addr())
            .scope(RouteScope::Link);
        if let Err(e) = h.replace_route(&route) {
            eprintln!("sbr: warning: failed to add subnet route {subnet} to the main table: {e}");
            continue;
        }
        let before = main_routes
            .iter()
            .find(|r| r.dst == subnet && r.priority == route.priority)
            .cloned();
        undo.push(format!("restore {subnet} in the main table"), move || {
            match before {
                Some(old) => h.replace_route(&old),
                None => h.delete_route(&route),
            }
            .map_err(|e| Error::failed(e.to_string()))
        });
    }
    for r in main_routes
        .iter()
        .filter(|r| r.scope != Some(RouteScope::Link))
    {
        match h.delete_route(r) {
            Ok(()) => {
                let back = r.clone();
                undo.push(format!("restore {} in the main table", r.dst), move || {
                    h.add_route(&back).map_err(|e| Error::failed(e.to_string()))
                });
            }
            Err(e) => eprintln!("sbr: warning: failed to delete route {}: {e}", r.dst),
        }
    }
}
