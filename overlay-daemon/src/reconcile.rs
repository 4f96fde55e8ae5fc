//! The reconciler (flannel.md §16 item 1): one desired-state table of peers, and the kernel brought to it on
//! every lease event (targeted), and fully (diff against what the kernel has, purging strays) at start-up,
//! when the device is deleted or changed, and every `--resync`. flannel only reacts to events, so a missed
//! event or a hand-made change stays wrong until restart (flannel.md §5, §6.2 "Gaps"); here it cannot.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;

use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::registry::LeaseEvent;
use crate::vxlan::{DeviceSpec, Peer, Vxlan};

pub struct Reconciler {
    vxlan: Vxlan,
    spec: DeviceSpec,
    dev: Option<u32>,
    own: Ipv4Net,
    network: Ipv4Net,
    subnet_len: u8,
    direct_routing: bool,
    underlay_networks: Vec<Ipv4Net>,
    /// The desired state. Kept across value-less delete events: the stored peer is what gets undone.
    peers: BTreeMap<Ipv4Net, Peer>,
    /// Whether `peers` came from a full etcd listing. Until then nothing is purged: a restarting daemon must
    /// not tear down the entries of peers it simply has not heard of yet (no lost packets on restart).
    synced: bool,
    metrics: Arc<Metrics>,
}

pub struct ReconcilerConfig {
    pub spec: DeviceSpec,
    pub own: Ipv4Net,
    pub subnet_len: u8,
    pub direct_routing: bool,
    pub underlay_networks: Vec<Ipv4Net>,
}

impl Reconciler {
    pub fn new(vxlan: Vxlan, c: ReconcilerConfig, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            vxlan,
            network: c.spec.network,
            spec: c.spec,
            dev: None,
            own: c.own,
            subnet_len: c.subnet_len,
            direct_routing: c.direct_routing,
            underlay_networks: c.underlay_networks,
            peers: BTreeMap::new(),
            synced: false,
            metrics,
        }
    }

    fn peer_of(&self, lease: &Lease) -> Option<Peer> {
        if lease.subnet == self.own || lease.subnet.prefix_len() != self.subnet_len {
            return None;
        }
        if !self.network.contains(&lease.subnet) {
            return None;
        }
        let mac = lease.attrs.vtep_mac()?;
        let ip = lease.attrs.public_ip;
        // DirectRouting applies when the peer's underlay address is on one of our connected networks
        // (flannel.md §2.1: the route lookup for it has no gateway).
        let direct = self.direct_routing && self.underlay_networks.iter().any(|n| n.contains(&ip));
        Some(Peer {
            public_ip: ip,
            mac,
            direct,
        })
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn count_netlink_error(&self, e: &impl std::fmt::Display) {
        self.metrics.netlink_errors.fetch_add(1, Relaxed);
        eprintln!("twilld: {e}");
    }

    /// Applies one lease event. Returns false if the kernel could not be updated (the next full pass retries).
    pub async fn apply(&mut self, ev: LeaseEvent, received: Instant) -> bool {
        let ok = match ev {
            LeaseEvent::Snapshot(leases) => {
                self.peers = leases
                    .iter()
                    .filter_map(|l| Some((l.subnet, self.peer_of(l)?)))
                    .collect();
                self.synced = true;
                self.full().await.is_some()
            }
            LeaseEvent::Added(lease) => {
                let new = self.peer_of(&lease);
                let old = match new {
                    Some(p) => self.peers.insert(lease.subnet, p),
                    None => self.peers.remove(&lease.subnet),
                };
                let mut ok = true;
                if let Some(old) = old.filter(|o| Some(*o) != new) {
                    // A changed MAC or address leaves the old FDB entry behind unless removed (flannel.md §6.2).
                    if let Some(dev) = self.dev {
                        if let Err(e) = self.vxlan.remove_peer(dev, lease.subnet, &old).await {
                            self.count_netlink_error(&e);
                            ok = false;
                        }
                    }
                }
                // Re-programmed even when unchanged: replace is idempotent and repairs a damaged entry.
                if let (Some(new), Some(dev)) = (new, self.dev) {
                    if let Err(e) = self.vxlan.add_peer(dev, lease.subnet, &new).await {
                        self.count_netlink_error(&e);
                        ok = false;
                    }
                }
                if new.is_some() {
                    eprintln!(
                        "twilld: peer {} at {} programmed",
                        lease.subnet, lease.attrs.public_ip
                    );
                }
                ok
            }
            LeaseEvent::Removed(subnet) => {
                let mut ok = true;
                if let (Some(old), Some(dev)) = (self.peers.remove(&subnet), self.dev) {
                    if let Err(e) = self.vxlan.remove_peer(dev, subnet, &old).await {
                        self.count_netlink_error(&e);
                        ok = false;
                    }
                    eprintln!("twilld: peer {subnet} at {} removed", old.public_ip);
                }
                ok
            }
        };
        self.metrics.peers.store(self.peers.len() as u64, Relaxed);
        if ok {
            self.metrics.observe_event_latency(received.elapsed());
        }
        ok
    }

    /// Brings the device and every peer entry to the desired state, removing anything else. Returns the
    /// number of repairs, or None if the kernel could not be read or the device not created.
    pub async fn full(&mut self) -> Option<u64> {
        self.metrics.reconcile_runs.fetch_add(1, Relaxed);
        let (dev, created) = match self.vxlan.ensure_device(&self.spec).await {
            Ok(r) => r,
            Err(e) => {
                self.count_netlink_error(&e);
                self.dev = None;
                self.metrics.set_ready(|r| r.device = false);
                return None;
            }
        };
        if created {
            self.metrics.device_recreated.fetch_add(1, Relaxed);
            eprintln!(
                "twilld: created {} (index {dev}); replaying {} peers",
                self.spec.name,
                self.peers.len()
            );
        }
        self.dev = Some(dev);
        self.metrics.set_ready(|r| r.device = true);
        if !self.synced {
            return Some(0);
        }
        let view = match self.vxlan.view(dev, self.network).await {
            Ok(v) => v,
            Err(e) => {
                self.count_netlink_error(&e);
                return None;
            }
        };
        let mut repairs = 0u64;
        let mut errors = Vec::new();
        let encap = |p: &&Peer| !p.direct;

        for (ip, mac) in &view.neighbours {
            let want = self
                .peers
                .iter()
                .find(|(s, p)| s.network() == *ip && encap(p))
                .map(|(_, p)| p.mac);
            if want.is_none() || want != *mac {
                repairs += 1;
                if let Err(e) = self.vxlan.del_neighbour(dev, *ip).await {
                    errors.push(e);
                }
            }
        }
        for (mac, dst) in &view.fdb {
            let wanted = self
                .peers
                .values()
                .filter(encap)
                .any(|p| p.mac == *mac && Some(p.public_ip) == *dst);
            if !wanted {
                repairs += 1;
                if let Err(e) = self.vxlan.del_fdb(dev, *mac, *dst).await {
                    errors.push(e);
                }
            }
        }
        for (net, (gw, onlink)) in &view.device_routes {
            let wanted = self.peers.get(net).is_some_and(|p| !p.direct)
                && *gw == Some(net.network())
                && *onlink;
            if !wanted {
                repairs += 1;
                if let Err(e) = self.vxlan.del_route(*net, Some(dev)).await {
                    errors.push(e);
                }
            }
        }
        for (net, gw) in &view.direct_routes {
            if net.prefix_len() != self.subnet_len || *net == self.own {
                continue;
            }
            let wanted = self
                .peers
                .get(net)
                .is_some_and(|p| p.direct && Some(p.public_ip) == *gw);
            if !wanted && self.direct_routing {
                repairs += 1;
                if let Err(e) = self.vxlan.del_route(*net, None).await {
                    errors.push(e);
                }
            }
        }
        for (subnet, peer) in &self.peers {
            let present = if peer.direct {
                view.direct_routes.get(subnet) == Some(&Some(peer.public_ip))
            } else {
                view.neighbours.get(&subnet.network()) == Some(&Some(peer.mac))
                    && view.fdb.contains(&(peer.mac, Some(peer.public_ip)))
                    && view.device_routes.get(subnet) == Some(&(Some(subnet.network()), true))
            };
            if !present {
                repairs += 1;
                if let Err(e) = self.vxlan.add_peer(dev, *subnet, peer).await {
                    errors.push(e);
                }
            }
        }
        for e in &errors {
            self.count_netlink_error(e);
        }
        if repairs > 0 {
            self.metrics.reconcile_repairs.fetch_add(repairs, Relaxed);
            eprintln!(
                "twilld: reconcile: {repairs} kernel entries repaired ({} peers)",
                self.peers.len()
            );
        }
        self.metrics.peers.store(self.peers.len() as u64, Relaxed);
        Some(repairs)
    }
}
