//! `useInterfaceNetwork`: the node device's own L3 configuration, captured before the move (which
//! flushes it) and applied to the device in the pod, as the reference does: universe-scope addresses
//! (IPv6 only when permanent: SLAAC and DHCPv6 addresses are not copied), the device's routes except
//! the kernel's, router advertisements' and IPv6 link-local ones, and the source rules that lead to
//! one of the captured routes' tables. The result reports the copied addresses and routes.

use ipnet::IpNet;
use twill_cni::{CniResult, Error, IpConfig, Result};
use twill_kernel::address::Scope;
use twill_kernel::{
    Address, Handle, LinkDetails, Route, RouteFilter, RouteProtocol, Rule, TABLE_MAIN,
};

/// `IFA_F_PERMANENT` from linux/if_addr.h.
const IFA_F_PERMANENT: u32 = 0x80;
/// `RT_TABLE_LOCAL`.
const TABLE_LOCAL: u32 = 255;

#[derive(Debug, Default)]
pub struct NetworkState {
    addresses: Vec<Address>,
    routes: Vec<Route>,
    rules: Vec<Rule>,
}

fn table_id(t: u32) -> u32 {
    if t == 0 {
        TABLE_MAIN
    } else {
        t
    }
}

fn is_v6_link_local(net: &IpNet) -> bool {
    match net.addr() {
        std::net::IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        std::net::IpAddr::V4(_) => false,
    }
}

impl NetworkState {
    pub fn capture(node: &Handle, dev: &LinkDetails) -> Result<NetworkState> {
        let name = &dev.link.name;
        let index = dev.link.index;
        let addresses: Vec<Address> = node
            .addresses(Some(index), None)
            .map_err(|e| {
                Error::failed(format!(
                    "failed to list addresses for host device {name}: {e}"
                ))
            })?
            .into_iter()
            .filter(|a| a.scope == Scope::Universe)
            .filter(|a| a.net.addr().is_ipv4() || a.flags & IFA_F_PERMANENT != 0)
            .collect();
        let routes: Vec<Route> = node
            .routes(RouteFilter {
                family: None,
                table: None,
                oif: Some(index),
            })
            .map_err(|e| {
                Error::failed(format!("failed to list routes for host device {name}: {e}"))
            })?
            .into_iter()
            .filter(|r| r.oif == Some(index) && r.table != TABLE_LOCAL)
            .filter(|r| !matches!(r.protocol, RouteProtocol::Kernel | RouteProtocol::Ra))
            .filter(|r| r.dst.prefix_len() == 0 || !is_v6_link_local(&r.dst))
            .collect();
        let tables: Vec<u32> = routes.iter().map(|r| table_id(r.table)).collect();
        let rules = node
            .rules(None)
            .map_err(|e| Error::failed(format!("failed to list rules: {e}")))?
            .into_iter()
            .filter(|r| r.table != 0 && r.table != TABLE_LOCAL && tables.contains(&r.table))
            .filter(|r| match &r.src {
                Some(src) => addresses.iter().any(|a| src.contains(&a.net.addr())),
                None => false,
            })
            .collect();
        Ok(NetworkState {
            addresses,
            routes,
            rules,
        })
    }

    /// Puts the captured configuration on the pod's device `index`; what is already there is fine.
    pub fn apply(&self, h: &Handle, ifname: &str, index: u32) -> Result<()> {
        let ok_if_exists = |r: twill_kernel::Result<()>| match r {
            Err(e) if !e.is_exists() => Err(e),
            _ => Ok(()),
        };
        for a in &self.addresses {
            ok_if_exists(h.add_address(index, a.net)).map_err(|e| {
                Error::failed(format!(
                    "failed to add copied address {} on {ifname}: {e}",
                    a.net
                ))
            })?;
        }
        // Link-scope routes first: a gateway must be reachable before a route through it is added.
        let mut routes = self.routes.clone();
        routes.sort_by_key(|r| std::cmp::Reverse(r.scope.map(u8::from).unwrap_or(0)));
        for r in &mut routes {
            r.oif = Some(index);
            ok_if_exists(h.add_route(r)).map_err(|e| {
                Error::failed(format!(
                    "failed to add copied route {} on {ifname}: {e}",
                    r.dst
                ))
            })?;
        }
        for rule in &self.rules {
            ok_if_exists(h.add_rule(rule)).map_err(|e| {
                Error::failed(format!(
                    "failed to add copied rule (src={:?} table={}): {e}",
                    rule.src, rule.table
                ))
            })?;
        }
        Ok(())
    }

    /// The copied addresses and routes, after whatever IPAM gave, as the reference reports them.
    pub fn merge_into(&self, result: &mut CniResult) {
        for a in &self.addresses {
            result.ips.push(IpConfig {
                interface: Some(0),
                address: a.net,
                gateway: None,
            });
        }
        for r in &self.routes {
            result.routes.push(twill_cni::Route {
                dst: r.dst,
                gw: r.gateway,
                mtu: None,
                adv_mss: None,
                priority: r.priority.filter(|p| *p != 0),
                table: (r.table != 0).then_some(r.table),
                scope: r.scope.map(u8::from).filter(|s| *s != 0),
            });
        }
    }
}
