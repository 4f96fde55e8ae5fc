//! Underlay interface selection and public IP (docs/architecture.md, "Interface selection").

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
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

/// `--iface` entries (names or addresses, first match wins), else the interface of the IPv4 default route.
pub fn select(
    handle: &Handle,
    ifaces: &[String],
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay, String> {
    let all = handle.links().map_err(|e| e.to_string())?;
    let mut chosen: Option<(Link, Option<Ipv4Addr>)> = None;
    if !ifaces.is_empty() {
        'outer: for want in ifaces {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                for l in &all {
                    if v4_addrs(handle, l.index)?.iter().any(|n| n.addr() == ip) {
                        chosen = Some((l.clone(), Some(ip)));
                        break 'outer;
                    }
                }
            } else if let Some(l) = all.iter().find(|l| l.name == *want) {
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
