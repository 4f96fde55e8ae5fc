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

use ipnet::Ipv4Net;

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::subnet::lease::Lease;
use crate::subnet::lease_check::{check, Expect, Invalid, InvalidLeases};
use crate::subnet::LeaseEvent;

/// Default for [`Reconciler::set_full_every`]: with the default 10 s period, a change no notification
/// reported is repaired within 100 s.
pub const FULL_EVERY: u32 = 10;

pub struct Reconciler<B: Backend> {
    backend: B,
    dev: Option<u32>,
    own: Ipv4Net,
    /// The desired state. Kept across value-less delete events: the stored peer is what gets undone.
    peers: BTreeMap<Ipv4Net, B::Peer>,
    /// Whether `peers` came from a full listing. Until then nothing is purged: a restarting daemon must not
    /// tear down the entries of peers it simply has not heard of yet (no lost packets on restart).
    synced: bool,
    /// What a peer lease must match, and the leases that did not.
    expect: Expect,
    invalid: InvalidLeases,
    metrics: Arc<Metrics>,
    /// A lease event arrived (or a pass failed) since the last full pass.
    desired_dirty: bool,
    /// Periodic resyncs since the last full pass; every `full_every`-th is full whatever the events said.
    since_full: u32,
    full_every: u32,
}

impl<B: Backend> Reconciler<B> {
    /// `own` is this node's subnet (never a peer); `expect` what a peer's lease must match.
    pub fn new(backend: B, own: Ipv4Net, expect: Expect, metrics: Arc<Metrics>) -> Self {
        Reconciler {
            backend,
            dev: None,
            own,
            peers: BTreeMap::new(),
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
                self.metrics.set_ready(|r| r.device = false);
            }
        }
        false
    }

    /// Our device's index, once it exists.
    pub fn device(&self) -> Option<u32> {
        self.dev
    }

    /// The peer a lease of another node describes, if it is valid (invalid ones are recorded and logged).
    fn peer_of(&mut self, lease: &Lease) -> Option<B::Peer> {
        if lease.subnet == self.own {
            return None;
        }
        if let Err((why, detail)) = check(lease, &self.expect) {
            self.invalid.set(lease.subnet, why, &detail);
            return None;
        }
        self.invalid.clear(lease.subnet);
        self.backend.peer_of(lease)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The desired peer table (valid leases of other nodes).
    pub fn peers(&self) -> &BTreeMap<Ipv4Net, B::Peer> {
        &self.peers
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn publish_invalid(&mut self) {
        if !self.invalid.take_changed() {
            return;
        }
        if let Ok(mut m) = self.metrics.invalid_leases.lock() {
            *m = self.invalid.by_reason();
        }
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
                let old = match &new {
                    Some(p) => self.peers.insert(lease.subnet, p.clone()),
                    None => self.peers.remove(&lease.subnet),
                };
                let Some(dev) = self.dev else {
                    // No device right now: the next full pass programs the table.
                    self.metrics.peers.store(self.peers.len() as u64, Relaxed);
                    return false;
                };
                let errors = match (&old, &new) {
                    (Some(old), None) => self
                        .backend
                        .remove_peer(dev, lease.subnet, old)
                        .await
                        .err()
                        .into_iter()
                        .collect(),
                    (None, Some(new)) => self
                        .backend
                        .add_peer(dev, lease.subnet, new)
                        .await
                        .err()
                        .into_iter()
                        .collect(),
                    (Some(old), Some(new)) => {
                        self.backend.update_peer(dev, lease.subnet, old, new).await
                    }
                    (None, None) => Vec::new(),
                };
                for e in &errors {
                    self.count_netlink_error(e);
                }
                if new.is_some() {
                    tracing::info!(
                        subnet = %lease.subnet,
                        public_ip = %lease.attrs.public_ip,
                        "peer {} at {} programmed",
                        lease.subnet,
                        lease.attrs.public_ip
                    );
                }
                errors.is_empty()
            }
            LeaseEvent::Garbled(_) => true,
            LeaseEvent::Removed(subnet) => {
                self.publish_invalid();
                let mut ok = true;
                if let (Some(old), Some(dev)) = (self.peers.remove(&subnet), self.dev) {
                    if let Err(e) = self.backend.remove_peer(dev, subnet, &old).await {
                        self.count_netlink_error(&e);
                        ok = false;
                    }
                    tracing::info!(%subnet, public_ip = %old, "peer {subnet} at {old} removed");
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
                self.metrics.set_ready(|r| r.device = false);
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
        self.metrics.set_ready(|r| r.device = true);
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
        self.metrics.peers.store(self.peers.len() as u64, Relaxed);
        Some(repairs.count)
    }
}
