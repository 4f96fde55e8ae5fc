//! The reconciler (flannel.md §16 item 1): one desired-state table of peers, and the kernel brought to it on
//! every lease event (targeted), and fully (diff against what the kernel has, purging strays) at start-up,
//! when the device is deleted or changed, and every `--resync`. flannel only reacts to events, so a missed
//! event or a hand-made change stays wrong until restart (flannel.md §5, §6.2 "Gaps"); here it cannot.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;

use crate::lease::Lease;
use crate::lease::VtepMac;
use crate::lease_check::{check, Expect, Invalid, InvalidLeases};
use crate::metrics::Metrics;
use crate::registry::LeaseEvent;
use crate::vxlan::{DeviceSpec, KernelView, Peer, Vxlan};

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
    /// What a peer lease must match, and the leases that did not.
    expect: Expect,
    invalid: InvalidLeases,
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
        let expect = Expect {
            network: c.spec.network,
            subnet_len: c.subnet_len,
            vni: c.spec.vni,
            own_public_ip: c.spec.local,
        };
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
            expect,
            invalid: InvalidLeases::default(),
            metrics,
        }
    }

    /// The peer a lease of another node describes, if it is valid (invalid ones are recorded and logged).
    fn peer_of(&mut self, lease: &Lease) -> Option<Peer> {
        if lease.subnet == self.own {
            return None;
        }
        if let Err((why, detail)) = check(lease, &self.expect) {
            self.invalid.set(lease.subnet, why, &detail);
            return None;
        }
        self.invalid.clear(lease.subnet);
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

    /// The desired peer table (valid leases of other nodes).
    pub fn peers(&self) -> &BTreeMap<Ipv4Net, Peer> {
        &self.peers
    }

    fn publish_invalid(&mut self) {
        if !self.invalid.take_changed() {
            return;
        }
        if let Ok(mut m) = self.metrics.invalid_leases.lock() {
            *m = self.invalid.by_reason();
        }
    }

    /// A new VTEP MAC for our device; the next full pass sets it.
    pub fn set_mac(&mut self, mac: VtepMac) {
        self.spec.mac = mac;
    }

    fn count_netlink_error(&self, e: &impl std::fmt::Display) {
        self.metrics.netlink_errors.fetch_add(1, Relaxed);
        eprintln!("twilld: {e}");
    }

    /// Applies one lease event. Returns false if the kernel could not be updated (the next full pass retries).
    pub async fn apply(&mut self, ev: LeaseEvent, received: Instant) -> bool {
        let ev = match ev {
            // A value that is not a lease takes away whatever peer the key described before.
            LeaseEvent::Garbled(g) => {
                if g.subnet != self.own {
                    self.invalid.set(g.subnet, Invalid::Json, &g.error);
                }
                LeaseEvent::Removed(g.subnet)
            }
            LeaseEvent::Removed(subnet) => {
                self.invalid.clear(subnet);
                LeaseEvent::Removed(subnet)
            }
            ev => ev,
        };
        let ok = match ev {
            LeaseEvent::Refill(leases) => {
                for l in &leases {
                    if let Some(p) = self.peer_of(l) {
                        self.peers.insert(l.subnet, p);
                    }
                }
                self.publish_invalid();
                self.full().await.is_some()
            }
            LeaseEvent::Snapshot(leases, garbled) => {
                let listed: std::collections::BTreeSet<Ipv4Net> = leases
                    .iter()
                    .map(|l| l.subnet)
                    .chain(garbled.iter().map(|g| g.subnet))
                    .collect();
                self.invalid.retain(|s| listed.contains(s));
                let mut peers = BTreeMap::new();
                for l in &leases {
                    if let Some(p) = self.peer_of(l) {
                        peers.insert(l.subnet, p);
                    }
                }
                for g in garbled.iter().filter(|g| g.subnet != self.own) {
                    self.invalid.set(g.subnet, Invalid::Json, &g.error);
                }
                self.peers = peers;
                self.synced = true;
                self.publish_invalid();
                self.full().await.is_some()
            }
            LeaseEvent::Added(lease) => {
                let new = self.peer_of(&lease);
                self.publish_invalid();
                let old = match new {
                    Some(p) => self.peers.insert(lease.subnet, p),
                    None => self.peers.remove(&lease.subnet),
                };
                let Some(dev) = self.dev else {
                    // No device right now: the next full pass programs the table.
                    self.metrics.peers.store(self.peers.len() as u64, Relaxed);
                    return false;
                };
                let mut errors = Vec::new();
                match (old, new) {
                    (Some(old), None) => {
                        errors.extend(self.vxlan.remove_peer(dev, lease.subnet, &old).await.err())
                    }
                    (old, Some(new)) => {
                        // New entries first (neighbour, FDB and route are replaced in place), then whatever
                        // of the old peer is left: deleting first would drop the peer's traffic in between.
                        // Re-programmed even when unchanged: replace is idempotent and repairs damage.
                        errors.extend(self.vxlan.add_peer(dev, lease.subnet, &new).await.err());
                        if let Some(old) =
                            old.filter(|o| !o.direct && (new.direct || o.mac != new.mac))
                        {
                            // FDB entries are keyed by MAC: a changed MAC leaves the old one (flannel.md §6.2).
                            errors.extend(
                                self.vxlan
                                    .del_fdb(dev, old.mac, Some(old.public_ip))
                                    .await
                                    .err(),
                            );
                            if new.direct {
                                errors.extend(
                                    self.vxlan
                                        .del_neighbour(dev, lease.subnet.network())
                                        .await
                                        .err(),
                                );
                            }
                        }
                    }
                    (None, None) => {}
                }
                for e in &errors {
                    self.count_netlink_error(e);
                }
                let ok = errors.is_empty();
                if new.is_some() {
                    eprintln!(
                        "twilld: peer {} at {} programmed",
                        lease.subnet, lease.attrs.public_ip
                    );
                }
                ok
            }
            LeaseEvent::Garbled(_) => true,
            LeaseEvent::Removed(subnet) => {
                self.publish_invalid();
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
        let plan = plan(
            &self.peers,
            &view,
            self.own,
            self.subnet_len,
            self.direct_routing,
        );
        let repairs = plan.len() as u64;
        let mut errors = Vec::new();
        for ip in &plan.stale_neighbours {
            errors.extend(self.vxlan.del_neighbour(dev, *ip).await.err());
        }
        for (mac, dst) in &plan.stale_fdb {
            errors.extend(self.vxlan.del_fdb(dev, *mac, *dst).await.err());
        }
        for net in &plan.stale_device_routes {
            errors.extend(self.vxlan.del_route(*net, Some(dev)).await.err());
        }
        for net in &plan.stale_direct_routes {
            errors.extend(self.vxlan.del_route(*net, None).await.err());
        }
        for subnet in &plan.missing_peers {
            if let Some(peer) = self.peers.get(subnet) {
                errors.extend(self.vxlan.add_peer(dev, *subnet, peer).await.err());
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

/// What a full reconciliation has to change: kernel entries nobody wants, and peers not fully programmed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub stale_neighbours: Vec<Ipv4Addr>,
    pub stale_fdb: Vec<(VtepMac, Option<Ipv4Addr>)>,
    pub stale_device_routes: Vec<Ipv4Net>,
    pub stale_direct_routes: Vec<Ipv4Net>,
    pub missing_peers: Vec<Ipv4Net>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.stale_neighbours.len()
            + self.stale_fdb.len()
            + self.stale_device_routes.len()
            + self.stale_direct_routes.len()
            + self.missing_peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Diffs the desired peer table against the kernel's view (pure, so it is unit-tested without a kernel).
pub fn plan(
    peers: &BTreeMap<Ipv4Net, Peer>,
    view: &KernelView,
    own: Ipv4Net,
    subnet_len: u8,
    direct_routing: bool,
) -> Plan {
    let mut p = Plan::default();
    let encap = |peer: &&Peer| !peer.direct;
    for (ip, mac) in &view.neighbours {
        let want = peers
            .iter()
            .find(|(s, peer)| s.network() == *ip && encap(peer))
            .map(|(_, peer)| peer.mac);
        if want.is_none() || want != *mac {
            p.stale_neighbours.push(*ip);
        }
    }
    for (mac, dst) in &view.fdb {
        // FDB entries are keyed by MAC: a peer whose MAC changed leaves its old entry here (flannel.md §6.2).
        let wanted = peers
            .values()
            .filter(encap)
            .any(|peer| peer.mac == *mac && Some(peer.public_ip) == *dst);
        if !wanted {
            p.stale_fdb.push((*mac, *dst));
        }
    }
    for (net, (gw, onlink)) in &view.device_routes {
        let wanted = peers.get(net).is_some_and(|peer| !peer.direct)
            && *gw == Some(net.network())
            && *onlink;
        if !wanted {
            p.stale_device_routes.push(*net);
        }
    }
    if direct_routing {
        // Only routes shaped like ours (a node subnet via a gateway) are candidates: other gateway routes into
        // the pod network are someone else's business.
        for (net, gw) in &view.direct_routes {
            if net.prefix_len() != subnet_len || *net == own {
                continue;
            }
            if !peers
                .get(net)
                .is_some_and(|peer| peer.direct && Some(peer.public_ip) == *gw)
            {
                p.stale_direct_routes.push(*net);
            }
        }
    }
    for (subnet, peer) in peers {
        let present = if peer.direct {
            view.direct_routes.get(subnet) == Some(&Some(peer.public_ip))
        } else {
            view.neighbours.get(&subnet.network()) == Some(&Some(peer.mac))
                && view.fdb.contains(&(peer.mac, Some(peer.public_ip)))
                && view.device_routes.get(subnet) == Some(&(Some(subnet.network()), true))
        };
        if !present {
            p.missing_peers.push(*subnet);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn mac(last: u8) -> VtepMac {
        VtepMac([2, 0, 0, 0, 0, last])
    }
    fn peer(public: &str, m: u8) -> Peer {
        Peer {
            public_ip: ip(public),
            mac: mac(m),
            direct: false,
        }
    }
    fn programmed(peers: &BTreeMap<Ipv4Net, Peer>) -> KernelView {
        let mut v = KernelView::default();
        for (s, p) in peers {
            v.neighbours.insert(s.network(), Some(p.mac));
            v.fdb.push((p.mac, Some(p.public_ip)));
            v.device_routes.insert(*s, (Some(s.network()), true));
        }
        v
    }
    const OWN: &str = "10.244.1.0/24";

    #[test]
    fn programmed_peers_need_nothing() {
        let peers = BTreeMap::from([
            (net("10.244.2.0/24"), peer("10.0.0.2", 2)),
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
        ]);
        assert!(plan(&peers, &programmed(&peers), net(OWN), 24, false).is_empty());
    }

    #[test]
    fn entries_of_gone_peers_are_purged_and_missing_peers_added() {
        let before = BTreeMap::from([
            (net("10.244.2.0/24"), peer("10.0.0.2", 2)),
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
        ]);
        let view = programmed(&before);
        let now = BTreeMap::from([
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
            (net("10.244.4.0/24"), peer("10.0.0.4", 4)),
        ]);
        let p = plan(&now, &view, net(OWN), 24, false);
        assert_eq!(p.stale_neighbours, vec![ip("10.244.2.0")]);
        assert_eq!(p.stale_fdb, vec![(mac(2), Some(ip("10.0.0.2")))]);
        assert_eq!(p.stale_device_routes, vec![net("10.244.2.0/24")]);
        assert_eq!(p.missing_peers, vec![net("10.244.4.0/24")]);
    }

    #[test]
    fn changed_mac_replaces_neighbour_and_drops_old_fdb_entry() {
        let old = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 2))]);
        let view = programmed(&old);
        let new = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 9))]);
        let p = plan(&new, &view, net(OWN), 24, false);
        assert_eq!(p.stale_neighbours, vec![ip("10.244.2.0")]);
        assert_eq!(p.stale_fdb, vec![(mac(2), Some(ip("10.0.0.2")))]);
        assert_eq!(p.missing_peers, vec![net("10.244.2.0/24")]);
    }

    #[test]
    fn bogus_route_and_fdb_entry_on_the_device_are_removed() {
        let peers = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 2))]);
        let mut view = programmed(&peers);
        view.device_routes
            .insert(net("10.99.0.0/24"), (None, false));
        view.fdb.push((VtepMac([0; 6]), Some(ip("10.0.0.77"))));
        let p = plan(&peers, &view, net(OWN), 24, false);
        assert_eq!(p.stale_device_routes, vec![net("10.99.0.0/24")]);
        assert_eq!(p.stale_fdb, vec![(VtepMac([0; 6]), Some(ip("10.0.0.77")))]);
        assert!(p.missing_peers.is_empty());
    }

    #[test]
    fn direct_routes_are_managed_only_with_direct_routing() {
        let mut peers = BTreeMap::new();
        peers.insert(
            net("10.244.2.0/24"),
            Peer {
                public_ip: ip("10.0.0.2"),
                mac: mac(2),
                direct: true,
            },
        );
        let mut view = KernelView::default();
        view.direct_routes
            .insert(net("10.244.2.0/24"), Some(ip("10.0.0.2")));
        view.direct_routes
            .insert(net("10.244.7.0/24"), Some(ip("10.0.0.7")));
        view.direct_routes
            .insert(net("10.244.8.0/25"), Some(ip("10.0.0.8")));
        let p = plan(&peers, &view, net(OWN), 24, true);
        assert_eq!(p.stale_direct_routes, vec![net("10.244.7.0/24")]);
        assert!(p.missing_peers.is_empty());
        let p = plan(&BTreeMap::new(), &view, net(OWN), 24, false);
        assert!(p.stale_direct_routes.is_empty());
    }
}
