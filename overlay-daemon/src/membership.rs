//! The two etcd-facing tasks of a running node: the lease watcher (list + watch `<prefix>/subnets/`, feeding
//! the reconciler and telling the keeper about our own key) and the lease keeper (renews our lease, takes it
//! back when it disappears, re-publishes it when our attributes change).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use crate::acquire::OwnLease;
use crate::daemon::{log, set_expiry, Backoff};
use crate::lease::{Lease, LeaseAttrs};
use crate::metrics::Metrics;
use crate::registry::{interpret, LeaseEvent, Registry, WatchOutcome};

/// What the watch saw of our own key.
#[derive(Debug)]
pub enum OwnEvent {
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

/// List + watch `<prefix>/subnets/` (flannel.md §5): resume from the last revision after a broken stream, a
/// compacted revision triggers a full re-list. Our own key goes to the lease keeper, the rest to the reconciler.
pub async fn watch_leases(
    mut registry: Registry,
    own: Ipv4Net,
    attrs: LeaseAttrs,
    tx: mpsc::Sender<(Instant, LeaseEvent)>,
    own_tx: mpsc::Sender<OwnEvent>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new();
    let mut next_revision: Option<i64> = None;
    loop {
        let revision = match next_revision {
            Some(r) => r,
            None => match registry.list().await {
                Ok((leases, rev)) => {
                    metrics.etcd_ok();
                    let _ = own_tx
                        .send(own_event(leases.iter().find(|l| l.subnet == own), &attrs))
                        .await;
                    let others: Vec<Lease> =
                        leases.into_iter().filter(|l| l.subnet != own).collect();
                    if tx
                        .send((Instant::now(), LeaseEvent::Snapshot(others)))
                        .await
                        .is_err()
                    {
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
            },
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
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    backoff.reset();
                    metrics.etcd_ok();
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

/// Renews our lease before it expires; when it is lost, takes the same subnet back if it is free instead of
/// exiting (flannel.md §16 item 4); if another node holds it, says so in the log, `/readyz` and metrics.
pub async fn keep_lease(
    mut registry: Registry,
    mut own: OwnLease,
    attrs: LeaseAttrs,
    ttl: Duration,
    margin: Duration,
    mut rx: mpsc::Receiver<OwnEvent>,
    mut mac_rx: mpsc::Receiver<crate::lease::VtepMac>,
    metrics: Arc<Metrics>,
) {
    let mut attrs = attrs;
    let renew_after = if margin < ttl { ttl - margin } else { ttl / 2 };
    let retry = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let far = Duration::from_secs(365 * 86_400);
    let mut recreate = false;
    let mut lost = false;
    let mut next = tokio::time::Instant::now() + if own.lease_id == 0 { far } else { renew_after };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            Some(mac) = mac_rx.recv() => {
                // Re-published at once (a fresh lease, as a renewal) so peers learn the new MAC.
                attrs = attrs.with_mac(mac);
                if own.lease_id == 0 {
                    match registry.put_reservation(own.subnet, &attrs).await {
                        Ok(()) => log(format!("reservation {} re-published with VTEP MAC {mac}", own.subnet)),
                        Err(e) => log(format!("re-publishing reservation {}: {e}", own.subnet)),
                    }
                    continue;
                }
                next = tokio::time::Instant::now();
                continue;
            }
            ev = rx.recv() => {
                match ev {
                    None => return,
                    Some(OwnEvent::Present) => {
                        if lost {
                            log(format!("subnet {} is registered as ours again", own.subnet));
                        }
                        lost = false;
                        metrics.set_ready(|r| r.lease_lost = false);
                        continue;
                    }
                    Some(OwnEvent::Gone) => {
                        log(format!("our lease on {} disappeared from etcd: re-acquiring the same subnet", own.subnet));
                        recreate = true;
                    }
                    Some(OwnEvent::Taken(by)) => {
                        log(format!("ERROR: subnet {} now belongs to {by}: pods on this node use a subnet that is no longer ours", own.subnet));
                        lost = true;
                        recreate = true;
                        metrics.set_ready(|r| r.lease_lost = true);
                        next = tokio::time::Instant::now() + retry;
                        continue;
                    }
                }
            }
        }
        if recreate {
            match registry.create(own.subnet, &attrs, ttl).await {
                Ok(Some(id)) => {
                    own.lease_id = id;
                    recreate = false;
                    lost = false;
                    metrics.etcd_ok();
                    metrics.set_ready(|r| r.lease_lost = false);
                    set_expiry(&metrics, &own, ttl);
                    log(format!("re-acquired subnet {}", own.subnet));
                    next = tokio::time::Instant::now() + renew_after;
                }
                Ok(None) => {
                    // Someone holds the key; the watch tells us whether it is us (Present) or not (Taken).
                    next = tokio::time::Instant::now() + retry;
                }
                Err(e) => {
                    metrics.etcd_error(&e.to_string());
                    log(format!("re-acquiring {}: {e}; retrying", own.subnet));
                    next = tokio::time::Instant::now() + retry;
                }
            }
            continue;
        }
        if own.lease_id == 0 || lost {
            next = tokio::time::Instant::now() + if lost { retry } else { far };
            continue;
        }
        match registry.renew(own.subnet, &attrs, ttl, own.lease_id).await {
            Ok(id) => {
                own.lease_id = id;
                metrics.etcd_ok();
                set_expiry(&metrics, &own, ttl);
                next = tokio::time::Instant::now() + renew_after;
            }
            Err(e) => {
                metrics.etcd_error(&e.to_string());
                log(format!("renewing lease on {}: {e}; retrying", own.subnet));
                next = tokio::time::Instant::now() + retry;
            }
        }
    }
}
