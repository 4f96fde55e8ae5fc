//! The kernel watcher: rtnetlink notifications for links, IPv4 routes and neighbours (the VXLAN FDB included:
//! its entries are AF_BRIDGE neighbours). A change to our device asks for a full pass at once, so it is
//! recreated and the peers replayed; a change to a route, neighbour or FDB entry of ours, or a lost
//! notification, marks the kernel view dirty, so the next periodic resync reads the kernel back instead of
//! skipping it.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use twill_kernel::notify::{self, Notification, Socket};

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

/// Subscribes to the notifications for device `name`, whose peer routes lie in `network` (of either family:
/// each device has its watcher, subscribed to the routes of its family).
pub fn watch_kernel(name: String, network: IpNet) -> Result<KernelWatch, Fatal> {
    let routes = match network {
        IpNet::V4(_) => notify::RTMGRP_IPV4_ROUTE,
        IpNet::V6(_) => notify::RTMGRP_IPV6_ROUTE,
    };
    let open = || -> std::io::Result<AsyncFd<Socket>> {
        let sock = notify::subscribe(notify::RTMGRP_LINK | notify::RTMGRP_NEIGH | routes)?;
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
                    let (ours, link) = scan(notify::notifications(&buf), &name, dev, network);
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

/// Reads one datagram of notifications: whether any touches a route, neighbour or FDB entry of ours or our
/// device, and whether one is about our device itself.
fn scan<'a>(
    notes: impl IntoIterator<Item = Notification<'a>>,
    name: &str,
    dev: u32,
    network: IpNet,
) -> (bool, bool) {
    let (mut ours, mut link) = (false, false);
    for n in notes {
        match n {
            Notification::Link { name: Some(n), .. } if n == name => {
                ours = true;
                link = true;
            }
            Notification::Link { .. } => {}
            Notification::Route { dst, oif, .. } => {
                ours |= oif.is_some_and(|o| dev == 0 || o == dev)
                    || dst.is_some_and(|d| network.contains(&d));
            }
            Notification::Neighbour { index } => ours |= dev == 0 || index == dev,
        }
    }
    (ours, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neigh(index: u32) -> Notification<'static> {
        Notification::Neighbour { index }
    }

    fn route(dst: &str, oif: u32) -> Notification<'static> {
        Notification::Route {
            dst: Some(dst.parse().unwrap()),
            oif: Some(oif),
            removed: false,
        }
    }

    const NET: &str = "10.244.0.0/16";

    fn scan_all(notes: &[Notification<'static>], dev: u32) -> (bool, bool) {
        scan(
            notes.iter().copied(),
            "flannel.1",
            dev,
            NET.parse().unwrap(),
        )
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
        assert_eq!(scan_all(&[route("192.168.1.0/24", 2)], 7), (false, false));
        assert_eq!(scan_all(&[route("192.168.1.0/24", 7)], 7), (true, false));
        assert_eq!(scan_all(&[route("10.244.9.0/24", 2)], 7), (true, false));
        // A route covering more than the network is not one of ours.
        assert_eq!(scan_all(&[route("10.0.0.0/8", 2)], 7), (false, false));
    }

    #[test]
    fn our_device_by_name_asks_for_a_full_pass() {
        let other = Notification::Link {
            index: 2,
            name: Some("eth0"),
        };
        let ours = Notification::Link {
            index: 7,
            name: Some("flannel.1"),
        };
        assert_eq!(scan_all(&[other], 7), (false, false));
        assert_eq!(scan_all(&[other, ours], 7), (true, true));
    }
}
