//! Underlay interface selection and public IP (docs/architecture.md, "Interface selection").

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader};
use rtnetlink::{Handle, RouteMessageBuilder};

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

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, String> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("listing links: {e}"))
}

async fn v4_addrs(handle: &Handle, index: u32) -> Result<Vec<Ipv4Net>, String> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("listing addresses: {e}"))?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })?;
            Ipv4Net::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

fn name_of(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn mtu_of(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
}

/// `--iface` entries (names or addresses, first match wins), else the interface of the IPv4 default route.
pub async fn select(
    handle: &Handle,
    ifaces: &[String],
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay, String> {
    let all = links(handle).await?;
    let mut chosen: Option<(LinkMessage, Option<Ipv4Addr>)> = None;
    if !ifaces.is_empty() {
        'outer: for want in ifaces {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                for l in &all {
                    if v4_addrs(handle, l.header.index)
                        .await?
                        .iter()
                        .any(|n| n.addr() == ip)
                    {
                        chosen = Some((l.clone(), Some(ip)));
                        break 'outer;
                    }
                }
            } else if let Some(l) = all.iter().find(|l| name_of(l) == *want) {
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
        let routes: Vec<_> = handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| format!("listing routes: {e}"))?;
        let oif = routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(o) => Some(*o),
                    _ => None,
                })
            })
            .ok_or("no IPv4 default route to pick the underlay interface from; use --iface")?;
        chosen = all
            .iter()
            .find(|l| l.header.index == oif)
            .map(|l| (l.clone(), None));
    }
    let Some((link, by_ip)) = chosen else {
        return Err("underlay interface not found".into());
    };
    let name = name_of(&link);
    let networks = v4_addrs(handle, link.header.index).await?;
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
    let mtu = mtu_of(&link);
    if mtu == 0 {
        return Err(format!("interface {name} reports MTU 0"));
    }
    Ok(Underlay {
        name,
        index: link.header.index,
        mtu,
        public_ip,
        networks,
    })
}
