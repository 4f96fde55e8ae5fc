//! The kernel watcher: rtnetlink notifications for links, IPv4 routes and neighbours (the VXLAN FDB included:
//! its entries are AF_BRIDGE neighbours). A change to our device asks for a full pass at once, so it is
//! recreated and the peers replayed; a change to a route, neighbour or FDB entry of ours, or a lost
//! notification, marks the kernel view dirty, so the next periodic resync reads the kernel back instead of
//! skipping it.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;

use crate::daemon::{log, Fatal};

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

/// Subscribes to the notifications for device `name`, whose peer routes lie in `network`.
pub fn watch_kernel(name: String, network: Ipv4Net) -> Result<KernelWatch, Fatal> {
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[G::Link, G::Ipv4Route, G::Neigh])
            .map_err(|e| format!("opening netlink monitor: {e}"))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(16);
    let state = Arc::new(KernelState::default());
    // Until the first read-back nothing is known to be clean.
    state.mark();
    let st = state.clone();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let m = match msg.payload {
                NetlinkPayload::InnerMessage(m) => m,
                // The socket's buffer overflowed (a burst, often our own programming): notifications were lost.
                NetlinkPayload::Overrun(_) => {
                    st.mark();
                    continue;
                }
                _ => continue,
            };
            match m {
                RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                    let ours = l
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == name));
                    if ours {
                        st.mark();
                        if tx.try_send(()).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                }
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                    if route_is_ours(&r, st.dev.load(Relaxed), network) {
                        st.mark();
                    }
                }
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                    let dev = st.dev.load(Relaxed);
                    if dev == 0 || n.header.ifindex == dev {
                        st.mark();
                    }
                }
                _ => {}
            }
        }
        // The socket failed: without notifications only a full read-back can tell what changed.
        log("netlink monitor stopped: every resync reads the kernel back");
        st.blind.store(true, Relaxed);
    });
    Ok(KernelWatch { link: rx, state })
}

/// A route through our device, or one for a destination inside the overlay network (a direct route to a peer
/// subnet, or a stray one a full pass would remove).
fn route_is_ours(r: &RouteMessage, dev: u32, network: Ipv4Net) -> bool {
    r.attributes.iter().any(|a| match a {
        RouteAttribute::Oif(o) => dev == 0 || *o == dev,
        RouteAttribute::Destination(RouteAddress::Inet(d)) => {
            Ipv4Net::new(*d, r.header.destination_prefix_length)
                .is_ok_and(|n| network.contains(&n))
        }
        _ => false,
    })
}
