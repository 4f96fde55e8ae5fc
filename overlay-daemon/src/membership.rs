//! The two etcd-facing tasks of a running node: the lease watcher (list + watch `<prefix>/subnets/`, feeding
//! the reconciler and telling the keeper about our own key) and the lease keeper (renews our lease, takes it
//! back when it disappears, re-publishes it when our attributes change).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use crate::acquire::OwnLease;
use crate::config::NetworkConfig;
use crate::daemon::{log, set_expiry, Backoff};
use crate::lease::{Lease, LeaseAttrs, VtepMac};
use crate::metrics::Metrics;
use crate::registry::{interpret, LeaseEvent, Registry, RegistryError, WatchOutcome};

/// What the watch saw of our own key.
#[derive(Debug)]
pub enum OwnEvent {
    /// The store went backwards (wiped, restored): a re-listing follows.
    StoreReset,
    /// Our key is gone (expired, deleted by hand).
    Gone,
    /// Our key is held by someone else.
    Taken(String),
    Present,
}

fn own_event(lease: Option<&Lease>, attrs: &LeaseAttrs) -> OwnEvent {
    match lease {
        None => OwnEvent::Gone,
        Some(l) if l.attrs.node_name == attrs.node_name && l.attrs.public_ip == attrs.public_ip => {
            OwnEvent::Present
        }
        Some(l) => OwnEvent::Taken(format!(
            "{} ({})",
            l.attrs
                .node_name
                .as_deref()
                .unwrap_or("a node without name"),
            l.attrs.public_ip
        )),
    }
}

/// List + watch `<prefix>/subnets/` as flannel does: resume from the last revision after a broken stream, a
/// compacted revision triggers a full re-list. Our own key goes to the lease keeper, the rest to the reconciler.
///
/// After an etcd store reset the nodes re-register one by one, once the network config is back. Purging
/// every peer the new store does not have yet would cut pod traffic that still works, so the first listing
/// after a reset (taken once the config is back) only adds and updates peers; the purging listing follows
/// `settle` later, when every live node had time to re-register.
pub async fn watch_leases(
    mut registry: Registry,
    own: Ipv4Net,
    attrs: LeaseAttrs,
    tx: mpsc::Sender<(Instant, LeaseEvent)>,
    own_tx: mpsc::Sender<OwnEvent>,
    metrics: Arc<Metrics>,
    settle: Duration,
) {
    let mut backoff = Backoff::new();
    let mut next_revision: Option<i64> = None;
    let mut after_reset = false;
    let mut purge_at: Option<tokio::time::Instant> = None;
    loop {
        let revision = match next_revision {
            Some(r) => r,
            None => {
                if after_reset {
                    wait_for_config(&mut registry, &metrics).await;
                }
                match registry.list_all().await {
                    Ok((leases, garbled, rev)) => {
                        metrics.etcd_ok();
                        if let Some(why) = registry.epoch().take_reset() {
                            store_reset(&why, &own_tx, &metrics).await;
                            after_reset = true;
                            // The listing is from the new store, but the config may not be back yet.
                            continue;
                        }
                        let _ = own_tx
                            .send(own_event(leases.iter().find(|l| l.subnet == own), &attrs))
                            .await;
                        let others: Vec<Lease> =
                            leases.into_iter().filter(|l| l.subnet != own).collect();
                        let ev = if after_reset {
                            after_reset = false;
                            purge_at = Some(tokio::time::Instant::now() + settle);
                            LeaseEvent::Refill(others)
                        } else {
                            purge_at = None;
                            LeaseEvent::Snapshot(others, garbled)
                        };
                        if tx.send((Instant::now(), ev)).await.is_err() {
                            return;
                        }
                        next_revision = Some(rev + 1);
                        rev + 1
                    }
                    Err(e) => {
                        log(format!("listing leases: {e}; retrying"));
                        metrics.etcd_error(&e.to_string());
                        backoff.wait().await;
                        continue;
                    }
                }
            }
        };
        let mut stream = match registry.watch(revision).await {
            Ok(s) => s,
            Err(e) => {
                log(format!("watching leases: {e}; retrying"));
                metrics.etcd_error(&e.to_string());
                backoff.wait().await;
                continue;
            }
        };
        let epoch = registry.epoch().clone();
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = epoch.notified() => match epoch.take_reset() {
                    Some(why) => {
                        store_reset(&why, &own_tx, &metrics).await;
                        after_reset = true;
                        next_revision = None;
                        break;
                    }
                    None => continue,
                },
                () = sleep_until_some(purge_at) => {
                    log("re-listing leases after the etcd store reset: peers that did not re-register are removed");
                    purge_at = None;
                    next_revision = None;
                    break;
                }
            };
            match msg {
                Ok(Some(resp)) => {
                    backoff.reset();
                    metrics.etcd_ok();
                    // A resumed watch on a store that went back would wait for revisions that mean
                    // something else now: its first header tells, and everything is listed again.
                    if !resp.canceled() && resp.compact_revision() == 0 {
                        epoch.observe(resp.header());
                    }
                    if let Some(why) = epoch.take_reset() {
                        store_reset(&why, &own_tx, &metrics).await;
                        after_reset = true;
                        next_revision = None;
                        break;
                    }
                    let cur = next_revision.unwrap_or(revision);
                    match interpret(&resp, cur) {
                        WatchOutcome::Relist => {
                            log("watch revision compacted or watch cancelled: re-listing leases");
                            next_revision = None;
                            break;
                        }
                        WatchOutcome::Events(events, next) => {
                            next_revision = Some(next);
                            let now = Instant::now();
                            for ev in events {
                                metrics.lease_events.fetch_add(1, Relaxed);
                                match &ev {
                                    LeaseEvent::Added(l) if l.subnet == own => {
                                        let _ = own_tx.send(own_event(Some(l), &attrs)).await;
                                    }
                                    LeaseEvent::Removed(s) if *s == own => {
                                        let _ = own_tx.send(OwnEvent::Gone).await;
                                    }
                                    _ => {
                                        if tx.send((now, ev)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(None) => {
                    log("lease watch closed by etcd; resuming");
                    break;
                }
                Err(e) => {
                    log(format!(
                        "lease watch broken: {e}; resuming from revision {}",
                        next_revision.unwrap_or(revision)
                    ));
                    metrics.etcd_error(&e.to_string());
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Until the network config is in the store again (the nodes re-register only then).
async fn wait_for_config(registry: &mut Registry, metrics: &Metrics) {
    loop {
        match registry.config().await {
            Ok(_) => return,
            Err(RegistryError::ConfigMissing(_)) => {}
            Err(e) => metrics.etcd_error(&e.to_string()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn store_reset(why: &str, own_tx: &mpsc::Sender<OwnEvent>, metrics: &Metrics) {
    log(format!(
        "ERROR: etcd store went back ({why}): re-listing all leases and re-registering ours"
    ));
    metrics.store_resets.fetch_add(1, Relaxed);
    metrics.set_ready(|r| r.store_reset = Some(why.to_string()));
    let _ = own_tx.send(OwnEvent::StoreReset).await;
}

/// Renews our lease before it expires; when it is lost, takes the same subnet back if it is free instead of
/// exiting as flanneld does; if another node holds it, says so in the log, `/readyz` and metrics.
/// After an etcd store reset it re-registers the lease once the network config is back in the store (and is
/// the one this node runs with), and clears the store-reset report when that is done.
pub struct LeaseKeeper {
    pub registry: Registry,
    pub own: OwnLease,
    pub attrs: LeaseAttrs,
    pub cfg: NetworkConfig,
    pub ttl: Duration,
    pub margin: Duration,
    pub metrics: Arc<Metrics>,
}

impl LeaseKeeper {
    /// Whether the store holds our network config again after a reset (logged once per state).
    async fn config_is_back(&mut self, said: &mut Option<String>) -> bool {
        let state = match self.registry.config().await {
            Ok(text) if NetworkConfig::parse(&text).ok().as_ref() == Some(&self.cfg) => return true,
            Ok(_) => "the network config in etcd differs from the one this node runs with: restart twilld to apply it".to_string(),
            Err(RegistryError::ConfigMissing(k)) => format!("waiting for the network config ({k}) to be put back"),
            Err(e) => {
                self.metrics.etcd_error(&e.to_string());
                format!("{e}")
            }
        };
        if said.as_ref() != Some(&state) {
            log(format!("etcd store reset: {state}"));
            let why = state.clone();
            self.metrics.set_ready(|r| {
                let base = r
                    .store_reset
                    .as_deref()
                    .unwrap_or("")
                    .split(" (")
                    .next()
                    .unwrap_or("")
                    .to_string();
                r.store_reset = Some(format!("{base} ({why})"));
            });
            *said = Some(state);
        }
        false
    }

    fn registered_again(&self, reset_pending: &mut bool) {
        if *reset_pending {
            *reset_pending = false;
            log(format!(
                "subnet {} registered again after the etcd store reset",
                self.own.subnet
            ));
            self.metrics.set_ready(|r| r.store_reset = None);
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<OwnEvent>,
        mut mac_rx: mpsc::Receiver<VtepMac>,
    ) {
        let (ttl, metrics) = (self.ttl, self.metrics.clone());
        let renew_after = if self.margin < ttl {
            ttl - self.margin
        } else {
            ttl / 2
        };
        let retry = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let far = Duration::from_secs(365 * 86_400);
        let now = tokio::time::Instant::now;
        let mut recreate = false;
        let mut lost = false;
        let mut reset_pending = false;
        let mut said: Option<String> = None;
        let mut next = now()
            + if self.own.lease_id == 0 {
                far
            } else {
                renew_after
            };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                Some(mac) = mac_rx.recv() => {
                    // Re-published at once (a fresh lease, as a renewal) so peers learn the new MAC.
                    self.attrs = self.attrs.with_mac(mac);
                    if self.own.lease_id == 0 {
                        match self.registry.put_reservation(self.own.subnet, &self.attrs).await {
                            Ok(()) => log(format!("reservation {} re-published with VTEP MAC {mac}", self.own.subnet)),
                            Err(e) => log(format!("re-publishing reservation {}: {e}", self.own.subnet)),
                        }
                        continue;
                    }
                    next = now();
                    continue;
                }
                ev = rx.recv() => {
                    match ev {
                        None => return,
                        Some(OwnEvent::StoreReset) => {
                            // Re-register as soon as the config is back (checked every second).
                            reset_pending = true;
                            said = None;
                            next = now();
                            continue;
                        }
                        Some(OwnEvent::Present) => {
                            if lost {
                                log(format!("subnet {} is registered as ours again", self.own.subnet));
                            }
                            lost = false;
                            recreate = false;
                            metrics.set_ready(|r| r.lease_lost = false);
                            if !reset_pending {
                                continue;
                            }
                            // A restored store holds our key with an old etcd lease: re-put it at once.
                            next = now();
                            continue;
                        }
                        Some(OwnEvent::Gone) => {
                            log(format!("our lease on {} disappeared from etcd: re-acquiring the same subnet", self.own.subnet));
                            recreate = true;
                        }
                        Some(OwnEvent::Taken(by)) => {
                            log(format!("ERROR: subnet {} now belongs to {by}: pods on this node use a subnet that is no longer ours", self.own.subnet));
                            lost = true;
                            recreate = true;
                            metrics.set_ready(|r| r.lease_lost = true);
                            next = now() + retry;
                            continue;
                        }
                    }
                }
            }
            if reset_pending && !self.config_is_back(&mut said).await {
                next = now() + Duration::from_secs(1);
                continue;
            }
            if recreate {
                match self
                    .registry
                    .create(self.own.subnet, &self.attrs, ttl)
                    .await
                {
                    Ok(Some(id)) => {
                        self.own.lease_id = id;
                        recreate = false;
                        lost = false;
                        metrics.etcd_ok();
                        metrics.set_ready(|r| r.lease_lost = false);
                        set_expiry(&metrics, &self.own, ttl);
                        log(format!("re-acquired subnet {}", self.own.subnet));
                        self.registered_again(&mut reset_pending);
                        next = now() + renew_after;
                    }
                    Ok(None) => {
                        // Someone holds the key; the watch tells us whether it is us (Present) or not (Taken).
                        next = now() + retry;
                    }
                    Err(e) => {
                        metrics.etcd_error(&e.to_string());
                        log(format!("re-acquiring {}: {e}; retrying", self.own.subnet));
                        next = now() + retry;
                    }
                }
                continue;
            }
            if self.own.lease_id == 0 || lost {
                if self.own.lease_id == 0 {
                    self.registered_again(&mut reset_pending);
                }
                next = now() + if lost { retry } else { far };
                continue;
            }
            match self
                .registry
                .renew(self.own.subnet, &self.attrs, ttl, self.own.lease_id)
                .await
            {
                Ok(Some(id)) => {
                    self.own.lease_id = id;
                    metrics.etcd_ok();
                    set_expiry(&metrics, &self.own, ttl);
                    self.registered_again(&mut reset_pending);
                    next = now() + renew_after;
                }
                Ok(None) => {
                    // Our key is gone although nobody told us: expired unnoticed, or the store lost it. The
                    // watcher re-lists (it may be watching a store that no longer exists); we re-create it.
                    let why = format!("our lease key for {} was gone at renewal", self.own.subnet);
                    if !reset_pending {
                        log(format!("{why}: re-acquiring it and re-listing all leases"));
                        self.registry.epoch().report(why);
                    }
                    recreate = true;
                    next = now();
                }
                Err(e) => {
                    metrics.etcd_error(&e.to_string());
                    log(format!(
                        "renewing lease on {}: {e}; retrying",
                        self.own.subnet
                    ));
                    next = now() + retry;
                }
            }
        }
    }
}
