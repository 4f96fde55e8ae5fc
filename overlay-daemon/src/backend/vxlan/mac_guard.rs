//! Guarding our VTEP MAC: peers' leases are checked for our MAC (and for MACs shared among peers); when
//! this node is the one to step away, the device and the lease switch to a new MAC.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::mpsc;

use super::vtep_mac::MacIdentity;
use super::VxlanBackend;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::subnet::{LeaseAttrs, LeaseEvent};

/// Whether a lease event can change the MAC verdict: the full check is linear in the peers, so it runs per
/// event only for a lease with our MAC or while a clash is being reported; every resync catches the rest.
pub fn event_matters(ev: &LeaseEvent, identity: &MacIdentity, alarm: bool) -> bool {
    match ev {
        LeaseEvent::Added(l) => alarm || l.attrs.vtep_mac() == Some(identity.mac()),
        LeaseEvent::Removed(_) | LeaseEvent::Garbled(_) => alarm,
        LeaseEvent::Snapshot(..) | LeaseEvent::Refill(_) => true,
    }
}

/// Checks the peer table for VTEP MAC clashes; reports them (log on change, `/readyz`, metrics) and, when
/// this node is the one to step away, switches the device and the lease to a new MAC. Returns whether a
/// clash is still being reported.
pub async fn guard_mac(
    identity: &mut MacIdentity,
    reconciler: &mut Reconciler<VxlanBackend>,
    attrs: &mut LeaseAttrs,
    publish: &mpsc::Sender<LeaseAttrs>,
    metrics: &Metrics,
) -> bool {
    let old = identity.mac();
    let v = identity.check(reconciler.peers(), Instant::now());
    let with_us = v.describe_with_us(old);
    let among = v.describe_among_peers();
    let before = metrics.readiness();
    if with_us != before.mac_collision {
        match &with_us {
            Some(w) => tracing::error!("{w}"),
            None => tracing::info!("VTEP MAC collision resolved (our MAC is {old})"),
        }
    }
    if among != before.peer_mac_duplicates {
        if let Some(a) = &among {
            tracing::warn!("{a}");
        }
    }
    metrics
        .vtep_mac_collisions
        .store(v.with_us.len() as u64, Relaxed);
    metrics.peer_mac_duplicates.store(
        v.among_peers.iter().map(|(_, s)| s.len() as u64).sum(),
        Relaxed,
    );
    metrics.set_ready(|r| {
        r.mac_collision = with_us;
        r.peer_mac_duplicates = among;
    });
    if let Some(new) = v.change_to {
        tracing::info!(
            "changing our VTEP MAC from {old} to {new} (generation {}) to resolve the collision",
            identity.generation()
        );
        metrics.vtep_mac_changes.fetch_add(1, Relaxed);
        reconciler.backend_mut().set_mac(new);
        reconciler.full().await;
        *attrs = attrs.with_mac(new);
        let _ = publish.send(attrs.clone()).await;
        tracing::info!("VTEP MAC collision resolved: our MAC is now {new}, lease re-published");
        metrics.vtep_mac_collisions.store(0, Relaxed);
        metrics.set_ready(|r| r.mac_collision = None);
        return !v.among_peers.is_empty();
    }
    !v.with_us.is_empty() || !v.among_peers.is_empty()
}

/// The daemon's hook for the MAC guard: our MAC identity and whether a clash is being reported.
pub struct MacGuard {
    identity: MacIdentity,
    alarm: bool,
}

impl MacGuard {
    pub fn new(identity: MacIdentity) -> Self {
        MacGuard {
            identity,
            alarm: false,
        }
    }
}

impl crate::daemon::Guard<VxlanBackend> for MacGuard {
    fn wants(&self, ev: &LeaseEvent) -> bool {
        event_matters(ev, &self.identity, self.alarm)
    }

    fn alarmed(&self) -> bool {
        self.alarm
    }

    async fn check(
        &mut self,
        reconciler: &mut Reconciler<VxlanBackend>,
        attrs: &mut LeaseAttrs,
        publish: &mpsc::Sender<LeaseAttrs>,
        metrics: &Metrics,
    ) {
        self.alarm = guard_mac(&mut self.identity, reconciler, attrs, publish, metrics).await;
    }
}
