//! The kernel watcher: rtnetlink notifications for links, IPv4 routes and neighbours (the VXLAN FDB included:
//! its entries are AF_BRIDGE neighbours). A change to our device asks for a full pass at once, so it is
//! recreated and the peers replayed; a change to a route, neighbour or FDB entry of ours, or a lost
//! notification, marks the kernel view dirty, so the next periodic resync reads the kernel back instead of
//! skipping it.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::daemon::Fatal;

/// What the notifications said since the last look.
#[derive(Default)]
pub struct KernelState {
    dirty: AtomicBool,
    /// The watcher is gone (socket error): every resync must read the kernel back.
    blind: AtomicBool,
    /// Our device's index; 0 while unknown (then every neighbour event counts as ours).
    dev: AtomicU32,
}

impl KernelState {
    pub fn set_device(&self, index: u32) {
        self.dev.store(index, Relaxed);
    }

    /// Whether something of ours may have changed since the last call; clears the mark. Called before the
    /// kernel is read back, so a change during the read marks the view dirty again.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Relaxed) || self.blind.load(Relaxed)
    }

    fn mark(&self) {
        self.dirty.store(true, Relaxed);
    }
}

pub struct KernelWatch {
    /// Our device was deleted or changed.
    pub link: mpsc::Receiver<()>,
    pub state: Arc<KernelState>,
}

// rtnetlink's legacy group bits (linux/rtnetlink.h) and message types; the headers are read in place
// rather than decoded: a full pass or a mass lease change produces tens of thousands of notifications, and
// the daemon's one thread should spend its time programming, not building attribute lists it drops.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const IFLA_IFNAME: u16 = 3;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;

/// Subscribes to the notifications for device `name`, whose peer routes lie in `network`.
pub fn watch_kernel(name: String, network: Ipv4Net) -> Result<KernelWatch, Fatal> {
    let open = || -> std::io::Result<AsyncFd<Socket>> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE,
        ))?;
        sock.set_non_blocking(true)?;
        // SAFETY: the Socket owns its descriptor, closes it only when dropped, and the AsyncFd owns the
        // Socket: the descriptor stays open and the same for the AsyncFd's whole life.
        unsafe { AsyncFd::register(sock) }.map_err(std::io::Error::from)
    };
    let sock = open().map_err(|source| Fatal::Netlink {
        what: "opening netlink monitor",
        source,
    })?;
    let (tx, rx) = mpsc::channel(16);
    let state = Arc::new(KernelState::default());
    // Until the first read-back nothing is known to be clean.
    state.mark();
    let st = state.clone();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            let Ok(mut ready) = sock.readable().await else {
                break;
            };
            let got = ready.try_io(|s| {
                buf.clear();
                s.get_ref().recv(&mut buf, 0)
            });
            match got {
                Err(_would_block) => continue,
                Ok(Ok(_)) => {
                    let dev = st.dev.load(Relaxed);
                    let (ours, link) = scan(&buf, &name, dev, network);
                    if ours {
                        st.mark();
                    }
                    if link && tx.try_send(()).is_err() && tx.is_closed() {
                        return;
                    }
                }
                // The socket's buffer overflowed (a burst, often our own programming): notifications were lost.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => st.mark(),
                Ok(Err(e)) => {
                    tracing::warn!("netlink monitor: {e}");
                    break;
                }
            }
        }
        // Without notifications only a full read-back can tell what changed.
        tracing::info!("netlink monitor stopped: every resync reads the kernel back");
        st.blind.store(true, Relaxed);
    });
    Ok(KernelWatch { link: rx, state })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The route attributes (type, payload) after a fixed header of `fixed` bytes.
fn attrs(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = fixed;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(body, at)?);
        let kind = u16_at(body, at + 2)?;
        let payload = body.get(at + 4..at + len.max(4))?;
        at += (len.max(4) + 3) & !3;
        Some((kind & 0x3fff, payload))
    })
}

/// Reads one datagram of notifications: whether any touches a route, neighbour or FDB entry of ours or our
/// device, and whether one is about our device itself.
fn scan(mut data: &[u8], name: &str, dev: u32, network: Ipv4Net) -> (bool, bool) {
    let (mut ours, mut link) = (false, false);
    while let (Some(len), Some(kind)) = (u32_at(data, 0), u16_at(data, 4)) {
        let len = len as usize;
        let Some(body) = data.get(NLMSG_HDRLEN..len) else {
            break;
        };
        match kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let named = attrs(body, IFINFOMSG_LEN).any(|(t, v)| {
                    t == IFLA_IFNAME && v.split(|&c| c == 0).next() == Some(name.as_bytes())
                });
                if named {
                    ours = true;
                    link = true;
                }
            }
            RTM_NEWROUTE | RTM_DELROUTE => {
                let prefix = body.get(1).copied().unwrap_or(0);
                let hit = attrs(body, RTMSG_LEN).any(|(t, v)| match t {
                    RTA_OIF => dev == 0 || u32_at(v, 0) == Some(dev),
                    RTA_DST => <[u8; 4]>::try_from(v).is_ok_and(|a| {
                        Ipv4Net::new(Ipv4Addr::from(a), prefix).is_ok_and(|n| network.contains(&n))
                    }),
                    _ => false,
                });
                ours |= hit;
            }
            RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= NDMSG_LEN => {
                ours |= dev == 0 || u32_at(body, 4) == Some(dev);
            }
            _ => {}
        }
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
        if len < NLMSG_HDRLEN {
            break;
        }
    }
    (ours, link)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn neigh(ifindex: u32) -> Vec<u8> {
        let mut fixed = vec![7, 0, 0, 0];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        fixed.extend_from_slice(&[0; 4]);
        msg(RTM_NEWNEIGH, &fixed, &[])
    }

    fn route(dst: [u8; 4], len: u8, oif: u32) -> Vec<u8> {
        let fixed = [2, len, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        msg(
            RTM_DELROUTE,
            &fixed,
            &[(RTA_DST, &dst), (RTA_OIF, &oif.to_ne_bytes())],
        )
    }

    const NET: &str = "10.244.0.0/16";

    fn scan_all(msgs: &[Vec<u8>], dev: u32) -> (bool, bool) {
        scan(&msgs.concat(), "flannel.1", dev, NET.parse().unwrap())
    }

    #[test]
    fn neighbours_and_fdb_entries_count_only_on_our_device() {
        assert_eq!(scan_all(&[neigh(3)], 7), (false, false));
        assert_eq!(scan_all(&[neigh(3), neigh(7)], 7), (true, false));
        // Device index not known yet: everything counts.
        assert_eq!(scan_all(&[neigh(3)], 0), (true, false));
    }

    #[test]
    fn routes_count_through_our_device_or_inside_the_network() {
        assert_eq!(
            scan_all(&[route([192, 168, 1, 0], 24, 2)], 7),
            (false, false)
        );
        assert_eq!(
            scan_all(&[route([192, 168, 1, 0], 24, 7)], 7),
            (true, false)
        );
        assert_eq!(scan_all(&[route([10, 244, 9, 0], 24, 2)], 7), (true, false));
        // A route covering more than the network is not one of ours.
        assert_eq!(scan_all(&[route([10, 0, 0, 0], 8, 2)], 7), (false, false));
    }

    #[test]
    fn our_device_by_name_asks_for_a_full_pass() {
        let fixed = [0u8; IFINFOMSG_LEN];
        let other = msg(RTM_NEWLINK, &fixed, &[(IFLA_IFNAME, b"eth0\0")]);
        let ours = msg(RTM_DELLINK, &fixed, &[(IFLA_IFNAME, b"flannel.1\0")]);
        assert_eq!(scan_all(std::slice::from_ref(&other), 7), (false, false));
        assert_eq!(scan_all(&[other, ours], 7), (true, true));
    }

    #[test]
    fn truncated_datagrams_are_read_up_to_the_damage() {
        let mut d = neigh(7);
        d.truncate(10);
        assert_eq!(
            scan(&d, "flannel.1", 7, NET.parse().unwrap()),
            (false, false)
        );
    }
}
