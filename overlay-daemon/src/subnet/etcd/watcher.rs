//! The lease watcher: list + watch `<prefix>/subnets/`, feeding the reconciler with the peers' leases and
//! telling the lease keeper about our own key.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use super::registry::{interpret, Registry, RegistryError, WatchOutcome};
use crate::daemon::Backoff;
use crate::metrics::Metrics;
use crate::subnet::lease::{Lease, LeaseAttrs};
use crate::subnet::LeaseEvent;

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
                        tracing::warn!("listing leases: {e}; retrying");
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
                tracing::warn!("watching leases: {e}; retrying");
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
                    tracing::info!("re-listing leases after the etcd store reset: peers that did not re-register are removed");
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
                            tracing::info!(
                                "watch revision compacted or watch cancelled: re-listing leases"
                            );
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
                    tracing::info!("lease watch closed by etcd; resuming");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "lease watch broken: {e}; resuming from revision {}",
                        next_revision.unwrap_or(revision)
                    );
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
    tracing::error!("etcd store went back ({why}): re-listing all leases and re-registering ours");
    metrics.store_resets.fetch_add(1, Relaxed);
    metrics.set_ready(|r| r.store_reset = Some(why.to_string()));
    let _ = own_tx.send(OwnEvent::StoreReset).await;
}
