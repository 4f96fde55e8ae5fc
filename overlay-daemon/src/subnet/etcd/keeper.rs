//! The lease keeper: renews our lease, takes it back when it disappears, re-publishes it when our attributes
//! change, and re-registers it after an etcd store reset.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::acquire::HeldLease;
use super::registry::{Registry, RegistryError};
use super::set_expiry;
use super::watcher::OwnEvent;
use crate::config::NetworkConfig;
use crate::metrics::Metrics;
use crate::subnet::lease::LeaseAttrs;

/// Renews our lease before it expires; when it is lost, takes the same subnet back if it is free instead of
/// exiting as flanneld does; if another node holds it, says so in the log, `/readyz` and metrics.
/// After an etcd store reset it re-registers the lease once the network config is back in the store (and is
/// the one this node runs with), and clears the store-reset report when that is done.
pub struct LeaseKeeper {
    pub registry: Registry,
    pub own: HeldLease,
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
            tracing::warn!("etcd store reset: {state}");
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
            tracing::info!(
                "subnet {} registered again after the etcd store reset",
                self.own.subnet
            );
            self.metrics.set_ready(|r| r.store_reset = None);
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<OwnEvent>,
        mut publish_rx: mpsc::Receiver<LeaseAttrs>,
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
                Some(attrs) = publish_rx.recv() => {
                    // Re-published at once (a fresh lease, as a renewal) so peers learn e.g. a new MAC.
                    self.attrs = attrs;
                    if self.own.lease_id == 0 {
                        let with = self.attrs.vtep_mac().map(|m| format!(" with VTEP MAC {m}")).unwrap_or_default();
                        match self.registry.put_reservation(self.own.subnet, &self.attrs).await {
                            Ok(()) => tracing::info!("reservation {} re-published{with}", self.own.subnet),
                            Err(e) => tracing::warn!("re-publishing reservation {}: {e}", self.own.subnet),
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
                                tracing::info!("subnet {} is registered as ours again", self.own.subnet);
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
                            tracing::info!("our lease on {} disappeared from etcd: re-acquiring the same subnet", self.own.subnet);
                            recreate = true;
                        }
                        Some(OwnEvent::Taken(by)) => {
                            tracing::error!("subnet {} now belongs to {by}: pods on this node use a subnet that is no longer ours", self.own.subnet);
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
                        tracing::info!("re-acquired subnet {}", self.own.subnet);
                        self.registered_again(&mut reset_pending);
                        next = now() + renew_after;
                    }
                    Ok(None) => {
                        // Someone holds the key; the watch tells us whether it is us (Present) or not (Taken).
                        next = now() + retry;
                    }
                    Err(e) => {
                        metrics.etcd_error(&e.to_string());
                        tracing::warn!("re-acquiring {}: {e}; retrying", self.own.subnet);
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
                        tracing::info!("{why}: re-acquiring it and re-listing all leases");
                        self.registry.epoch().report(why);
                    }
                    recreate = true;
                    next = now();
                }
                Err(e) => {
                    metrics.etcd_error(&e.to_string());
                    tracing::warn!("renewing lease on {}: {e}; retrying", self.own.subnet);
                    next = now() + retry;
                }
            }
        }
    }
}
