//! Underlay interface selection and public IP (docs/architecture.md, "Interface selection").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use regex::Regex;
use twill_kernel::{Family, Handle, Link, RouteFilter, TABLE_MAIN};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The address advertised as `PublicIP` and used as the IPv4 VXLAN device's local address; `None` on an
    /// IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    /// Connected IPv4 networks of the interface: a peer inside one is "directly reachable" for DirectRouting.
    pub networks: Vec<Ipv4Net>,
    /// `PublicIPv6`, the IPv6 device's local address; `Some` exactly when the network runs IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Connected global IPv6 networks of the interface.
    pub networks_v6: Vec<Ipv6Net>,
}

/// Which families the network runs, and the advertised addresses given by flags.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub v4: bool,
    pub v6: bool,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// IFA_F_DEPRECATED: an address that must not be chosen as a source.
const IFA_F_DEPRECATED: u32 = 0x20;

fn v4_addrs(handle: &Handle, index: u32) -> Result<Vec<Ipv4Net>, String> {
    Ok(v4_addresses(handle, index)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// The interface's IPv4 addresses with their flags, in the kernel's order (primary first).
fn v4_addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Net, u32)>, String> {
    let addrs = handle
        .addresses(Some(index), Some(Family::V4))
        .map_err(|e| e.to_string())?;
    Ok(addrs
        .into_iter()
        .filter_map(|a| match a.net {
            IpNet::V4(n) => Some((n, a.flags)),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// Usable global IPv6 addresses (no link-local: a VXLAN endpoint a lease names must not need a zone; none
/// whose duplicate detection failed or that is deprecated), in the kernel's order.
fn v6_addrs(handle: &Handle, index: u32) -> Result<Vec<Ipv6Net>, String> {
    let addrs = handle
        .addresses(Some(index), Some(Family::V6))
        .map_err(|e| e.to_string())?;
    Ok(addrs
        .into_iter()
        .filter(|a| !a.dadfailed && a.flags & IFA_F_DEPRECATED == 0)
        .filter_map(|a| match a.net {
            IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 != 0xfe80 => Some(n),
            _ => None,
        })
        .collect())
}

/// How the underlay is chosen, as flanneld: `--iface` entries (names or addresses), then `--iface-regex`
/// patterns, then `--iface-can-reach`; the first match wins. When none is given: the interface of the IPv4
/// default route.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    pub iface: Vec<String>,
    pub iface_regex: Vec<Regex>,
    pub can_reach: Option<IpAddr>,
}

impl Choice {
    fn is_empty(&self) -> bool {
        self.iface.is_empty() && self.iface_regex.is_empty() && self.can_reach.is_none()
    }
}

/// An interface and, when the choice named one, the address to use on it (of either family).
type Chosen = (Link, Option<IpAddr>);

fn by_iface(handle: &Handle, all: &[Link], ifaces: &[String]) -> Result<Option<Chosen>, String> {
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            for l in all {
                let has = match ip {
                    IpAddr::V4(ip) => v4_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip),
                    IpAddr::V6(ip) => v6_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip),
                };
                if has {
                    return Ok(Some((l.clone(), Some(ip))));
                }
            }
        } else if let Some(l) = all.iter().find(|l| l.name == *want) {
            return Ok(Some((l.clone(), None)));
        }
    }
    Ok(None)
}

/// As flanneld: each pattern in turn is matched against the usable IPv4 addresses of every interface (global or
/// link-local unicast, not deprecated), then against the interface names.
fn by_regex(handle: &Handle, all: &[Link], patterns: &[Regex]) -> Result<Option<Chosen>, String> {
    for re in patterns {
        for l in all {
            let usable = v4_addresses(handle, l.index)?
                .into_iter()
                .find(|(n, flags)| {
                    let ip = n.addr();
                    flags & IFA_F_DEPRECATED == 0
                        && !(ip.is_loopback()
                            || ip.is_unspecified()
                            || ip.is_broadcast()
                            || ip.is_multicast())
                        && re.is_match(&ip.to_string())
                });
            if let Some((n, _)) = usable {
                return Ok(Some((l.clone(), Some(n.addr().into()))));
            }
        }
        if let Some(l) = all.iter().find(|l| re.is_match(&l.name)) {
            return Ok(Some((l.clone(), None)));
        }
    }
    Ok(None)
}

/// The interface (and its source address) the kernel's route to `ip` uses, as `ip route get`.
fn by_route(handle: &Handle, all: &[Link], ip: IpAddr) -> Result<Chosen, String> {
    let route = handle
        .route_get(ip)
        .map_err(|e| format!("--iface-can-reach={ip}: {e}"))?;
    let link = route
        .oif
        .and_then(|o| all.iter().find(|l| l.index == o))
        .ok_or_else(|| format!("--iface-can-reach={ip}: the route to it has no interface"))?;
    Ok((link.clone(), route.src))
}

/// The interface of the IPv4 default route (of the IPv6 one on an IPv6-only network).
fn by_default_route(handle: &Handle, all: &[Link], v4: bool) -> Result<Option<Chosen>, String> {
    let (family, name) = if v4 {
        (Family::V4, "IPv4")
    } else {
        (Family::V6, "IPv6")
    };
    let filter = RouteFilter {
        family: Some(family),
        table: Some(TABLE_MAIN),
        oif: None,
    };
    let routes = handle.routes(filter).map_err(|e| e.to_string())?;
    let oif = routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .find_map(|r| r.oif)
        .ok_or_else(|| {
            format!("no {name} default route to pick the underlay interface from; use --iface")
        })?;
    Ok(all
        .iter()
        .find(|l| l.index == oif)
        .map(|l| (l.clone(), None)))
}

/// One family's public address when that family is wanted: the one given on the command line, else the one
/// the interface was chosen by, else the interface's first; none of them is an error (`missing`).
fn public_addr<A>(
    wanted: bool,
    given: Option<A>,
    chosen_by: Option<A>,
    first: Option<A>,
    missing: impl FnOnce() -> String,
) -> Result<Option<A>, String> {
    if !wanted {
        return Ok(None);
    }
    given.or(chosen_by).or(first).map(Some).ok_or_else(missing)
}

/// The underlay as `choice` says, and its public address of each family the network runs (`want`): the one
/// given by flag, else the address the choice matched, else the interface's first address of the family.
pub fn select(handle: &Handle, choice: &Choice, want: Want) -> Result<Underlay, String> {
    let all = handle.links().map_err(|e| e.to_string())?;
    let chosen = if choice.is_empty() {
        by_default_route(handle, &all, want.v4)?
    } else {
        match by_iface(handle, &all, &choice.iface)? {
            Some(c) => Some(c),
            None => match by_regex(handle, &all, &choice.iface_regex)? {
                Some(c) => Some(c),
                None => match choice.can_reach {
                    Some(ip) => Some(by_route(handle, &all, ip)?),
                    None => None,
                },
            },
        }
    };
    let Some((link, by_ip)) = chosen else {
        if choice.is_empty() {
            return Err("underlay interface not found".into());
        }
        let mut tried: Vec<String> = choice
            .iface
            .iter()
            .map(|i| format!("--iface={i}"))
            .collect();
        tried.extend(
            choice
                .iface_regex
                .iter()
                .map(|r| format!("--iface-regex={r}")),
        );
        return Err(format!(
            "no interface matches {}: the interfaces are {}",
            tried.join(", "),
            all.iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let name = link.name.clone();
    let networks = v4_addrs(handle, link.index)?;
    let public_ip = public_addr(
        want.v4,
        want.public_ip,
        by_ip.and_then(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }),
        networks.first().map(|n| n.addr()),
        || format!("interface {name} has no IPv4 address; use --public-ip"),
    )?;
    let networks_v6 = v6_addrs(handle, link.index)?;
    let public_ipv6 = public_addr(
        want.v6,
        want.public_ipv6,
        by_ip.and_then(|a| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }),
        networks_v6.first().map(|n| n.addr()),
        || format!("interface {name} has no global IPv6 address; use --public-ipv6"),
    )?;
    let mtu = link.mtu;
    if mtu == 0 {
        return Err(format!("interface {name} reports MTU 0"));
    }
    Ok(Underlay {
        name,
        index: link.index,
        mtu,
        public_ip,
        networks,
        public_ipv6,
        networks_v6,
    })
}
