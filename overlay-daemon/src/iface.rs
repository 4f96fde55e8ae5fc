//! Underlay interface selection and public IP (docs/architecture.md, "Interface selection").

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use twill_kernel::{Family, Handle, Link, RouteFilter, TABLE_MAIN};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The address advertised as `PublicIP` and used as the VXLAN local address.
    pub public_ip: Ipv4Addr,
    /// Connected IPv4 networks of the interface: a peer inside one is "directly reachable" for DirectRouting.
    pub networks: Vec<Ipv4Net>,
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

/// An interface and, when the choice named one, the address to use on it.
type Chosen = (Link, Option<Ipv4Addr>);

fn by_iface(handle: &Handle, all: &[Link], ifaces: &[String]) -> Result<Option<Chosen>, String> {
    for want in ifaces {
        if let Ok(ip) = want.parse::<Ipv4Addr>() {
            for l in all {
                if v4_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip) {
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
                return Ok(Some((l.clone(), Some(n.addr()))));
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
    let src = match route.src {
        Some(IpAddr::V4(src)) => Some(src),
        _ => None,
    };
    Ok((link.clone(), src))
}

fn by_default_route(handle: &Handle, all: &[Link]) -> Result<Option<Chosen>, String> {
    let filter = RouteFilter {
        family: Some(Family::V4),
        table: Some(TABLE_MAIN),
        oif: None,
    };
    let routes = handle.routes(filter).map_err(|e| e.to_string())?;
    let oif = routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .find_map(|r| r.oif)
        .ok_or("no IPv4 default route to pick the underlay interface from; use --iface")?;
    Ok(all
        .iter()
        .find(|l| l.index == oif)
        .map(|l| (l.clone(), None)))
}

/// The underlay as `choice` says, and its public IP: `public_ip` when given, else the address the choice
/// matched, else the interface's first IPv4 address.
pub fn select(
    handle: &Handle,
    choice: &Choice,
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay, String> {
    let all = handle.links().map_err(|e| e.to_string())?;
    let chosen = if choice.is_empty() {
        by_default_route(handle, &all)?
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
    let public_ip = match public_ip
        .or(by_ip)
        .or_else(|| networks.first().map(|n| n.addr()))
    {
        Some(ip) => ip,
        None => {
            return Err(format!(
                "interface {name} has no IPv4 address; use --public-ip"
            ))
        }
    };
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
    })
}
