//! The etcd subnet manager, flannel's etcd layout (docs/architecture.md, "etcd layout" to "Watching leases"): the
//! network config at `<prefix>/config`, one key per lease under `<prefix>/subnets/`, held by etcd leases. Revisions,
//! compaction, etcd lease ids and store-reset detection stay in this folder.

pub mod acquire;
pub mod keeper;
pub mod registry;
pub mod store_epoch;
pub mod watcher;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use self::acquire::{AcquireError, HeldLease};
use self::keeper::LeaseKeeper;
use self::registry::{Registry, RegistryError};
use self::watcher::{watch_leases, OwnEvent};
use super::{
    Lease, LeaseAttrs, LeaseEvent, Membership, OwnLease, SubnetError, SubnetKey, SubnetManager,
};
use crate::config::NetworkConfig;
use crate::flags::Options;
use crate::metrics::Metrics;

pub struct EtcdManager {
    registry: Registry,
    metrics: Arc<Metrics>,
    ttl: Duration,
    margin: Duration,
    /// After a store reset, how long the nodes get to re-register before peers missing from the store are
    /// purged.
    settle: Duration,
    /// Our lease with its etcd lease id, once acquired.
    held: Option<HeldLease>,
}

impl EtcdManager {
    /// Connects (lazily: the channel reconnects by itself once etcd is back).
    pub async fn connect(
        opts: &Options,
        metrics: Arc<Metrics>,
        settle: Duration,
    ) -> Result<Self, SubnetError> {
        Ok(EtcdManager {
            registry: Registry::connect(opts).await.map_err(from_registry)?,
            metrics,
            ttl: opts.lease_ttl,
            margin: opts.renew_margin,
            settle,
            held: None,
        })
    }
}

fn from_registry(e: RegistryError) -> SubnetError {
    match e {
        RegistryError::ConfigMissing(k) => SubnetError::ConfigMissing(k),
        RegistryError::Etcd(e) => SubnetError::Unavailable(e),
    }
}

impl SubnetManager for EtcdManager {
    async fn network_config(&mut self) -> Result<NetworkConfig, SubnetError> {
        let text = self.registry.config().await.map_err(from_registry)?;
        NetworkConfig::parse(&text).map_err(|e| SubnetError::ConfigInvalid(e.to_string()))
    }

    async fn leases(&mut self) -> Result<Vec<Lease>, SubnetError> {
        Ok(self.registry.list().await.map_err(from_registry)?.0)
    }

    async fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: SubnetKey,
    ) -> Result<OwnLease, SubnetError> {
        let held = acquire::acquire(&mut self.registry, cfg, attrs, &previous, self.ttl)
            .await
            .map_err(|e| match e {
                AcquireError::Etcd(e) => from_registry(e),
                AcquireError::OutOfSubnets => SubnetError::OutOfSubnets,
                AcquireError::TooManyRaces => SubnetError::TooManyRaces,
            })?;
        set_expiry(&self.metrics, &held, self.ttl);
        let own = OwnLease {
            key: held.key,
            reservation: held.lease_id == 0,
        };
        self.held = Some(held);
        Ok(own)
    }

    fn start(&mut self, own: &OwnLease, attrs: &LeaseAttrs, cfg: &NetworkConfig) -> Membership {
        let (ev_tx, ev_rx) = mpsc::channel::<(Instant, LeaseEvent)>(4096);
        let (own_tx, own_rx) = mpsc::channel::<OwnEvent>(64);
        let (publish_tx, publish_rx) = mpsc::channel::<LeaseAttrs>(4);
        tokio::spawn(watch_leases(
            self.registry.clone(),
            own.key,
            attrs.clone(),
            ev_tx,
            own_tx,
            self.metrics.clone(),
            self.settle,
        ));
        // A lease this manager did not acquire has no etcd lease id to renew: kept as a reservation.
        let held = match self.held.clone().filter(|h| h.key == own.key) {
            Some(h) => h,
            None => HeldLease {
                key: own.key,
                lease_id: 0,
            },
        };
        let keeper = LeaseKeeper {
            registry: self.registry.clone(),
            own: held,
            attrs: attrs.clone(),
            cfg: cfg.clone(),
            ttl: self.ttl,
            margin: self.margin,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(keeper.run(own_rx, publish_rx));
        Membership {
            events: ev_rx,
            publish: publish_tx,
        }
    }

    async fn release(&mut self, own: &OwnLease) -> Result<(), SubnetError> {
        self.held = None;
        self.registry.delete(&own.key).await.map_err(from_registry)
    }
}

/// Publishes when our etcd lease expires (0 for a reservation, which does not).
pub fn set_expiry(metrics: &Metrics, own: &HeldLease, ttl: Duration) {
    let v = if own.lease_id == 0 {
        0
    } else {
        (SystemTime::now() + ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    metrics.lease_expiry_unix.store(v, Relaxed);
}
