//! Underlay interface selection and public IP (docs/architecture.md, "Interface selection").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
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

fn v4_addrs(handle: &Handle, index: u32) -> Result<Vec<Ipv4Net>, String> {
    let addrs = handle
        .addresses(Some(index), Some(Family::V4))
        .map_err(|e| e.to_string())?;
    Ok(addrs
        .into_iter()
        .filter_map(|a| match a.net {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// Usable global IPv6 addresses (no link-local: a VXLAN endpoint a lease names must not need a zone; no
/// address whose duplicate detection failed), as flannel picks them.
fn v6_addrs(handle: &Handle, index: u32) -> Result<Vec<Ipv6Net>, String> {
    let addrs = handle
        .addresses(Some(index), Some(Family::V6))
        .map_err(|e| e.to_string())?;
    Ok(addrs
        .into_iter()
        .filter(|a| !a.dadfailed)
        .filter_map(|a| match a.net {
            IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 != 0xfe80 => Some(n),
            _ => None,
        })
        .collect())
}

/// `--iface` entries (names or addresses of either family, first match wins), else the interface of the IPv4
/// default route (the IPv6 one on an IPv6-only network); then the addresses of each family the network runs.
pub fn select(handle: &Handle, ifaces: &[String], want: Want) -> Result<Underlay, String> {
    let all = handle.links().map_err(|e| e.to_string())?;
    let mut chosen: Option<(Link, Option<IpAddr>)> = None;
    if !ifaces.is_empty() {
        'outer: for w in ifaces {
            if let Ok(ip) = w.parse::<IpAddr>() {
                for l in &all {
                    let has = match ip {
                        IpAddr::V4(ip) => v4_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip),
                        IpAddr::V6(ip) => v6_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip),
                    };
                    if has {
                        chosen = Some((l.clone(), Some(ip)));
                        break 'outer;
                    }
                }
            } else if let Some(l) = all.iter().find(|l| l.name == *w) {
                chosen = Some((l.clone(), None));
                break;
            }
        }
        if chosen.is_none() {
            return Err(format!(
                "none of the interfaces given by --iface ({}) exists",
                ifaces.join(",")
            ));
        }
    } else {
        let (family, name) = if want.v4 {
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
        chosen = all
            .iter()
            .find(|l| l.index == oif)
            .map(|l| (l.clone(), None));
    }
    let Some((link, by_ip)) = chosen else {
        return Err("underlay interface not found".into());
    };
    let name = link.name.clone();
    let networks = v4_addrs(handle, link.index)?;
    let public_ip = if want.v4 {
        let by_ip = by_ip.and_then(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        match want
            .public_ip
            .or(by_ip)
            .or_else(|| networks.first().map(|n| n.addr()))
        {
            Some(ip) => Some(ip),
            None => {
                return Err(format!(
                    "interface {name} has no IPv4 address; use --public-ip"
                ))
            }
        }
    } else {
        None
    };
    let networks_v6 = v6_addrs(handle, link.index)?;
    let public_ipv6 = if want.v6 {
        let by_ip = by_ip.and_then(|a| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        });
        match want
            .public_ipv6
            .or(by_ip)
            .or_else(|| networks_v6.first().map(|n| n.addr()))
        {
            Some(ip) => Some(ip),
            None => {
                return Err(format!(
                    "interface {name} has no global IPv6 address; use --public-ipv6"
                ))
            }
        }
    } else {
        None
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
        public_ipv6,
        networks_v6,
    })
}
