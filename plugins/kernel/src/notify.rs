//! rtnetlink notifications: a socket subscribed to multicast groups, and what each message of a received
//! datagram is about. Only the keys a watcher decides on are read (device, destination, output device),
//! in place: a full pass or a mass change produces tens of thousands of notifications, and a daemon should
//! spend its time programming, not building attribute lists it drops.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::SocketAddr;

pub use netlink_sys::Socket;

use crate::nl::{attributes, frames};

/// Legacy multicast group bits (linux/rtnetlink.h) for [`subscribe`].
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_NEIGH: u32 = 0x4;
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const IFLA_IFNAME: u16 = 3;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
/// `struct ifinfomsg`, `struct rtmsg`, `struct ndmsg`.
const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A non-blocking NETLINK_ROUTE socket in the calling thread's namespace, subscribed to `groups`
/// (`RTMGRP_*` bits). Read it with `recv`; `ENOBUFS` means notifications were lost.
pub fn subscribe(groups: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, groups))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// What one notification is about. Only a route says whether it was removed (a benchmark times additions and
/// removals apart); for the rest a watcher re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification<'a> {
    /// A device was added, changed or removed.
    Link { index: u32, name: Option<&'a str> },
    /// A route was added or removed.
    Route {
        /// `None` for a default route.
        dst: Option<IpNet>,
        oif: Option<u32>,
        /// `RTM_DELROUTE` rather than `RTM_NEWROUTE` (which also announces a replaced route).
        removed: bool,
    },
    /// A neighbour or FDB entry (an AF_BRIDGE neighbour) on device `index` was added or removed.
    Neighbour { index: u32 },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn route_dst(family: u8, prefix: u8, v: &[u8]) -> Option<IpNet> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => return None,
    };
    IpNet::new(ip, prefix).ok()
}

/// The link, route and neighbour notifications of one received datagram, in order; other messages are
/// skipped, and a malformed message ends the datagram.
pub fn notifications(datagram: &[u8]) -> impl Iterator<Item = Notification<'_>> {
    frames(datagram).map_while(Result::ok).filter_map(|frame| {
        let body = frame.payload();
        match frame.kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let index = u32_at(body, 4)?;
                let name = attributes(body, IFINFOMSG_LEN)
                    .find(|(t, _)| *t == IFLA_IFNAME)
                    .and_then(|(_, v)| v.split(|&c| c == 0).next())
                    .and_then(|n| std::str::from_utf8(n).ok());
                Some(Notification::Link { index, name })
            }
            RTM_NEWROUTE | RTM_DELROUTE if body.len() >= RTMSG_LEN => {
                let (family, prefix) = (body[0], body[1]);
                let (mut dst, mut oif) = (None, None);
                for (t, v) in attributes(body, RTMSG_LEN) {
                    match t {
                        RTA_DST => dst = route_dst(family, prefix, v),
                        RTA_OIF => oif = u32_at(v, 0),
                        _ => {}
                    }
                }
                Some(Notification::Route {
                    dst,
                    oif,
                    removed: frame.kind == RTM_DELROUTE,
                })
            }
            RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= NDMSG_LEN => {
                Some(Notification::Neighbour {
                    index: u32_at(body, 4)?,
                })
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::NLMSG_HDRLEN;

    fn msg(kind: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = fixed.to_vec();
        for (t, v) in attrs {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut m = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn reads_links_routes_and_neighbours_of_either_family() {
        let mut link = [0u8; IFINFOMSG_LEN];
        link[4..8].copy_from_slice(&7u32.to_ne_bytes());
        let v4 = [AF_INET, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let v6 = [AF_INET6, 64, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let dst6: Ipv6Addr = "fd00:42::".parse().unwrap();
        let mut neigh = vec![7, 0, 0, 0];
        neigh.extend_from_slice(&9u32.to_ne_bytes());
        neigh.extend_from_slice(&[0; 4]);
        let data = [
            msg(RTM_DELLINK, &link, &[(IFLA_IFNAME, b"flannel.1\0")]),
            msg(
                RTM_NEWROUTE,
                &v4,
                &[(RTA_DST, &[10, 244, 9, 0]), (RTA_OIF, &3u32.to_ne_bytes())],
            ),
            msg(RTM_DELROUTE, &v6, &[(RTA_DST, &dst6.octets())]),
            msg(3, &[0; 4], &[]),
            msg(RTM_NEWNEIGH, &neigh, &[]),
        ]
        .concat();
        let got: Vec<_> = notifications(&data).collect();
        assert_eq!(
            got,
            vec![
                Notification::Link {
                    index: 7,
                    name: Some("flannel.1")
                },
                Notification::Route {
                    dst: Some("10.244.9.0/24".parse().unwrap()),
                    oif: Some(3),
                    removed: false
                },
                Notification::Route {
                    dst: Some("fd00:42::/64".parse().unwrap()),
                    oif: None,
                    removed: true
                },
                Notification::Neighbour { index: 9 },
            ]
        );
    }

    #[test]
    fn a_truncated_datagram_is_read_up_to_the_damage() {
        let mut neigh = vec![7, 0, 0, 0];
        neigh.extend_from_slice(&9u32.to_ne_bytes());
        neigh.extend_from_slice(&[0; 4]);
        let whole = msg(RTM_NEWNEIGH, &neigh, &[]);
        let mut data = whole.clone();
        data.extend_from_slice(&whole[..10]);
        assert_eq!(notifications(&data).count(), 1);
    }
}
