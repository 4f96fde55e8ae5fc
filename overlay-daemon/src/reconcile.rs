//! The reconciler (docs/architecture.md, "Watching leases"): one desired-state table of peers, and the kernel brought
//! to it on every lease event (targeted), and fully (diff against what the kernel has, purging strays) at start-up,
//! when the device is deleted or changed, and every `--resync`. flannel only reacts to events, so a missed event or a
//! hand-made change stays wrong until restart (docs/architecture.md, "Watching leases"); here it cannot.
//!
//! It knows leases and a [`Backend`], nothing of the store the leases come from nor of the kernel objects a
//! peer takes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::family::Family;
use crate::metrics::{Metrics, Slot};
use crate::subnet::lease::{Lease, SubnetKey};
use crate::subnet::lease_check::{check, Expect, Invalid, InvalidLeases};
use crate::subnet::LeaseEvent;

/// Default for [`Reconciler::set_full_every`]: with the default 10 s period, a change no notification
/// reported is repaired within 100 s.
pub const FULL_EVERY: u32 = 10;

/// One family's reconciler: a dual-stack node runs two, each over its own backend and device, fed the same
/// lease events; each looks only at its family's subnet of a lease.
pub struct Reconciler<B: Backend> {
    backend: B,
    dev: Option<u32>,
    own: B::Net,
    /// The desired state. Kept across value-less delete events: the stored peer is what gets undone.
    peers: BTreeMap<B::Net, B::Peer>,
    /// The lease key each peer came from: a delete event removes a peer only if it names the key the peer
    /// is programmed from (a node whose key changed, e.g. gained a v6 subnet, may delete its old key after
    /// putting the new one).
    origin: BTreeMap<B::Net, SubnetKey>,
    /// Valid leases whose subnet another lease already holds (two keys sharing a subnet: two dual-stack nodes
    /// that picked one subnet at once until the younger gives it up, or a node that re-keys, its new key put
    /// before the old is deleted). The first stays programmed; one of these takes over when it goes.
    shadow: BTreeMap<SubnetKey, (B::Net, B::Peer)>,
    /// Whether `peers` came from a full listing. Until then nothing is purged: a restarting daemon must not
    /// tear down the entries of peers it simply has not heard of yet (no lost packets on restart).
    synced: bool,
    /// What a peer lease must match, and the leases that did not.
    expect: Expect<B::Net>,
    invalid: InvalidLeases<B::Net>,
    metrics: Arc<Metrics>,
    /// Where this reconciler reports its device and peers in the metrics.
    slot: Slot,
    /// A lease event arrived (or a pass failed) since the last full pass.
    desired_dirty: bool,
    /// Periodic resyncs since the last full pass; every `full_every`-th is full whatever the events said.
    since_full: u32,
    full_every: u32,
}

impl<B: Backend> Reconciler<B> {
    /// `own` is this node's subnet (never a peer); `expect` what a peer's lease must match.
    pub fn new(
        backend: B,
        own: B::Net,
        expect: Expect<B::Net>,
        metrics: Arc<Metrics>,
        slot: Slot,
    ) -> Self {
        Reconciler {
            backend,
            dev: None,
            own,
            peers: BTreeMap::new(),
            origin: BTreeMap::new(),
            shadow: BTreeMap::new(),
            slot,
            synced: false,
            expect,
            invalid: InvalidLeases::default(),
            metrics,
            desired_dirty: true,
            since_full: 0,
            full_every: FULL_EVERY,
        }
    }

    /// Every `n`-th periodic resync reads the kernel back even when nothing was heard (at least 1: all).
    pub fn set_full_every(&mut self, n: u32) {
        self.full_every = n.max(1);
    }

    /// The periodic resync. A full pass costs a dump of the kernel's routes, neighbours and FDB and a diff
    /// against every peer, so it runs only when a lease event arrived, the kernel reported a change of ours
    /// (`kernel_changed`, which includes lost notifications), the last pass failed, or it is the forced
    /// `full_every`-th: the safety net for a change nobody told us about. Otherwise only the device is checked
    /// (a link lookup and its addresses, independent of the peer count). Returns whether it was a full pass.
    pub async fn resync(&mut self, kernel_changed: bool) -> bool {
        self.since_full += 1;
        let full = kernel_changed
            || self.desired_dirty
            || !self.synced
            || self.dev.is_none()
            || self.since_full >= self.full_every;
        if full {
            self.metrics.resync_full.fetch_add(1, Relaxed);
            self.full().await;
            return true;
        }
        self.metrics.resync_skipped.fetch_add(1, Relaxed);
        match self.backend.ensure_device().await {
            Ok((dev, created)) => {
                self.dev = Some(dev);
                if created {
                    // The kernel dropped every peer entry with the old device.
                    self.full().await;
                    return true;
                }
            }
            Err(e) => {
                self.count_netlink_error(&e);
                self.dev = None;
                self.metrics.set_device_ready(self.slot, false);
            }
        }
        false
    }

    /// Our device's index, once it exists.
    pub fn device(&self) -> Option<u32> {
        self.dev
    }

    /// The peer a lease of another node describes in our family, with its subnet, if it is valid (invalid
    /// ones are recorded and logged).
    fn peer_of(&mut self, lease: &Lease) -> Option<(B::Net, B::Peer)> {
        let s = B::Net::of_key(&lease.key)?;
        if s == self.own {
            return None;
        }
        if let Err((why, detail)) = check(lease, s, &self.expect) {
            self.invalid.set(s, why, &detail);
            return None;
        }
        self.invalid.clear(s);
        Some((s, self.backend.peer_of(lease)?))
    }

    fn insert_peer(&mut self, key: SubnetKey, s: B::Net, p: B::Peer) -> Option<B::Peer> {
        self.origin.insert(s, key);
        self.peers.insert(s, p)
    }

    /// Into the table, or into the shadow when another lease holds the subnet.
    fn table_insert(&mut self, key: SubnetKey, s: B::Net, p: B::Peer) {
        if self.origin.get(&s).is_some_and(|k| *k != key) {
            self.shadow.insert(key, (s, p));
        } else {
            self.insert_peer(key, s, p);
        }
    }

    /// A shadowed lease of subnet `s`, taken out of the shadow.
    fn heir_of(&mut self, s: B::Net) -> Option<(SubnetKey, B::Peer)> {
        let key = *self.shadow.iter().find(|(_, (t, _))| *t == s)?.0;
        self.shadow.remove(&key).map(|(_, p)| (key, p))
    }

    fn remove_peer_entry(&mut self, s: &B::Net) -> Option<B::Peer> {
        self.origin.remove(s);
        self.peers.remove(s)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The desired peer table (valid leases of other nodes).
    pub fn peers(&self) -> &BTreeMap<B::Net, B::Peer> {
        &self.peers
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn publish_invalid(&mut self) {
        if !self.invalid.take_changed() {
            return;
        }
        self.metrics
            .set_invalid_leases(self.slot, self.invalid.by_reason());
    }

    fn count_netlink_error(&self, e: &impl std::fmt::Display) {
        self.metrics.netlink_errors.fetch_add(1, Relaxed);
        tracing::warn!("{e}");
    }

    /// Applies one lease event. Returns false if the kernel could not be updated (the next full pass retries).
    pub async fn apply(&mut self, ev: LeaseEvent, received: Instant) -> bool {
        self.desired_dirty = true;
        let ev = match ev {
            // A value that is not a lease takes away whatever peer the key described before.
            LeaseEvent::Garbled(g) => {
                if let Some(s) = B::Net::of_key(&g.key).filter(|s| *s != self.own) {
                    self.invalid.set(s, Invalid::Json, &g.error);
                }
                LeaseEvent::Removed(g.key)
            }
            LeaseEvent::Removed(key) => {
                if let Some(s) = B::Net::of_key(&key) {
                    self.invalid.clear(s);
                }
                LeaseEvent::Removed(key)
            }
            ev => ev,
        };
        let ok = match ev {
            LeaseEvent::Refill(leases) => {
                for l in &leases {
                    if let Some((s, p)) = self.peer_of(l) {
                        self.table_insert(l.key, s, p);
                    }
                }
                self.publish_invalid();
                self.full().await.is_some()
            }
            LeaseEvent::Snapshot(leases, garbled) => {
                let listed: std::collections::BTreeSet<B::Net> = leases
                    .iter()
                    .map(|l| l.key)
                    .chain(garbled.iter().map(|g| g.key))
                    .filter_map(|k| B::Net::of_key(&k))
                    .collect();
                self.invalid.retain(|s| listed.contains(s));
                self.peers.clear();
                self.origin.clear();
                self.shadow.clear();
                for l in &leases {
                    if let Some((s, p)) = self.peer_of(l) {
                        self.table_insert(l.key, s, p);
                    }
                }
                for g in &garbled {
                    if let Some(s) = B::Net::of_key(&g.key).filter(|s| *s != self.own) {
                        self.invalid.set(s, Invalid::Json, &g.error);
                    }
                }
                self.synced = true;
                self.publish_invalid();
                self.full().await.is_some()
            }
            LeaseEvent::Added(lease) => {
                let Some(subnet) = B::Net::of_key(&lease.key) else {
                    // No subnet of our family: not our business.
                    return true;
                };
                let new = self.peer_of(&lease).map(|(_, p)| p);
                self.publish_invalid();
                if self.origin.get(&subnet).is_some_and(|k| *k != lease.key) {
                    // Another lease holds the subnet: it stays programmed, this one waits in the shadow.
                    match new {
                        Some(p) => {
                            tracing::warn!(
                                "lease {} shares {subnet} with lease {}: kept aside while that one holds it",
                                lease.key,
                                self.origin.get(&subnet).map(|k| k.to_string()).unwrap_or_default()
                            );
                            self.shadow.insert(lease.key, (subnet, p));
                        }
                        None => {
                            self.shadow.remove(&lease.key);
                        }
                    }
                    return true;
                }
                self.shadow.remove(&lease.key);
                let old = match &new {
                    Some(p) => self.insert_peer(lease.key, subnet, p.clone()),
                    None => self.remove_peer_entry(&subnet),
                };
                let Some(dev) = self.dev else {
                    // No device right now: the next full pass programs the table.
                    self.publish_peer_count();
                    return false;
                };
                let errors = match (&old, &new) {
                    (Some(old), None) => self
                        .backend
                        .remove_peer(dev, subnet, old)
                        .await
                        .err()
                        .into_iter()
                        .collect(),
                    (None, Some(new)) => self
                        .backend
                        .add_peer(dev, subnet, new)
                        .await
                        .err()
                        .into_iter()
                        .collect(),
                    (Some(old), Some(new)) => self.backend.update_peer(dev, subnet, old, new).await,
                    (None, None) => Vec::new(),
                };
                for e in &errors {
                    self.count_netlink_error(e);
                }
                if let Some(p) = &new {
                    tracing::info!(%subnet, public_ip = %p, "peer {subnet} at {p} programmed");
                }
                errors.is_empty()
            }
            LeaseEvent::Garbled(_) => true,
            LeaseEvent::Removed(key) => {
                self.publish_invalid();
                let mut ok = true;
                self.shadow.remove(&key);
                let subnet = B::Net::of_key(&key).filter(|s| self.origin.get(s) == Some(&key));
                if let Some(subnet) = subnet {
                    let old = self.remove_peer_entry(&subnet);
                    let heir = self.heir_of(subnet);
                    if let Some((k, p)) = &heir {
                        self.insert_peer(*k, subnet, p.clone());
                    }
                    if let Some(dev) = self.dev {
                        let errors = match (&old, &heir) {
                            (Some(old), Some((_, new))) => {
                                self.backend.update_peer(dev, subnet, old, new).await
                            }
                            (None, Some((_, new))) => self
                                .backend
                                .add_peer(dev, subnet, new)
                                .await
                                .err()
                                .into_iter()
                                .collect(),
                            (Some(old), None) => self
                                .backend
                                .remove_peer(dev, subnet, old)
                                .await
                                .err()
                                .into_iter()
                                .collect(),
                            (None, None) => Vec::new(),
                        };
                        for e in &errors {
                            self.count_netlink_error(e);
                        }
                        ok = errors.is_empty();
                        match (&old, &heir) {
                            (_, Some((k, p))) => {
                                tracing::info!(%subnet, public_ip = %p, "peer {subnet} at {p} (lease {k}) programmed")
                            }
                            (Some(old), None) => {
                                tracing::info!(%subnet, public_ip = %old, "peer {subnet} at {old} removed")
                            }
                            (None, None) => {}
                        }
                    }
                }
                ok
            }
        };
        self.publish_peer_count();
        if ok {
            self.metrics.observe_event_latency(received.elapsed());
        }
        ok
    }

    fn publish_peer_count(&self) {
        self.metrics.set_peers(self.slot, self.peers.len() as u64);
    }

    /// Brings the device and every peer entry to the desired state, removing anything else. Returns the
    /// number of repairs, or None if the kernel could not be read or the device not created.
    pub async fn full(&mut self) -> Option<u64> {
        self.metrics.reconcile_runs.fetch_add(1, Relaxed);
        self.since_full = 0;
        // Cleared first: a lease event during the pass is not lost; a failed pass sets it again.
        self.desired_dirty = false;
        let r = self.full_pass().await;
        if r.is_none() || !self.synced {
            self.desired_dirty = true;
        }
        r
    }

    async fn full_pass(&mut self) -> Option<u64> {
        let (dev, created) = match self.backend.ensure_device().await {
            Ok(r) => r,
            Err(e) => {
                self.count_netlink_error(&e);
                self.dev = None;
                self.metrics.set_device_ready(self.slot, false);
                return None;
            }
        };
        if created {
            self.metrics.device_recreated.fetch_add(1, Relaxed);
            tracing::info!(
                "created {} (index {dev}); replaying {} peers",
                self.backend.device_name(),
                self.peers.len()
            );
        }
        self.dev = Some(dev);
        self.metrics.set_device_ready(self.slot, true);
        if !self.synced {
            return Some(0);
        }
        let view = match self.backend.view(dev).await {
            Ok(v) => v,
            Err(e) => {
                self.count_netlink_error(&e);
                return None;
            }
        };
        let repairs = self.backend.repair(dev, &self.peers, &view).await;
        for e in &repairs.errors {
            self.count_netlink_error(e);
        }
        if !repairs.errors.is_empty() {
            self.desired_dirty = true;
        }
        if repairs.count > 0 {
            self.metrics
                .reconcile_repairs
                .fetch_add(repairs.count, Relaxed);
            tracing::info!(
                "reconcile: {} kernel entries repaired ({} peers)",
                repairs.count,
                self.peers.len()
            );
        }
        self.publish_peer_count();
        Some(repairs.count)
    }
}
