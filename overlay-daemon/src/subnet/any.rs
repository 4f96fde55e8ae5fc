//! The subnet manager the flags chose: etcd, or the Kubernetes API (`--kube-subnet-mgr`). One type, so the
//! daemon's start-up is written once for both.

use std::sync::Arc;
use std::time::Duration;

use super::etcd::EtcdManager;
use super::kube::KubeManager;
use super::{Lease, LeaseAttrs, Membership, OwnLease, SubnetError, SubnetKey, SubnetManager};
use crate::config::NetworkConfig;
use crate::flags::Options;
use crate::metrics::Metrics;

pub enum AnyManager {
    Etcd(Box<EtcdManager>),
    Kube(Box<KubeManager>),
}

impl AnyManager {
    /// `settle`: see [`EtcdManager::connect`]. Errors say what could not be reached.
    pub async fn connect(
        opts: &Options,
        metrics: Arc<Metrics>,
        settle: Duration,
    ) -> Result<Self, SubnetError> {
        match &opts.kube {
            Some(k) => Ok(AnyManager::Kube(Box::new(
                KubeManager::connect(&opts.node, k, metrics).await?,
            ))),
            None => EtcdManager::connect(opts, metrics, settle)
                .await
                .map(|m| AnyManager::Etcd(Box::new(m)))
                .map_err(|e| {
                    SubnetError::Unavailable(format!(
                        "cannot reach etcd at {}: {e}",
                        opts.etcd_endpoints.join(",")
                    ))
                }),
        }
    }

    /// Our node's name: the flags' or, in Kubernetes mode, the one learnt from our Pod.
    pub fn node_name<'a>(&'a self, opts: &'a Options) -> &'a str {
        match self {
            AnyManager::Kube(k) => k.node_name(),
            AnyManager::Etcd(_) => opts.node.known().unwrap_or_default(),
        }
    }

    /// The public IP an administrator stored for this node (Kubernetes mode's `node-public-ip` annotation).
    pub async fn stored_public_ip(&self) -> Option<std::net::Ipv4Addr> {
        match self {
            AnyManager::Etcd(_) => None,
            AnyManager::Kube(k) => k.stored_public_ip().await,
        }
    }

    /// The same for IPv6 (`node-public-ipv6`).
    pub async fn stored_public_ipv6(&self) -> Option<std::net::Ipv6Addr> {
        match self {
            AnyManager::Etcd(_) => None,
            AnyManager::Kube(k) => k.stored_public_ipv6().await,
        }
    }
}

impl SubnetManager for AnyManager {
    async fn network_config(&mut self) -> Result<NetworkConfig, SubnetError> {
        match self {
            AnyManager::Etcd(m) => m.network_config().await,
            AnyManager::Kube(m) => m.network_config().await,
        }
    }

    async fn leases(&mut self) -> Result<Vec<Lease>, SubnetError> {
        match self {
            AnyManager::Etcd(m) => m.leases().await,
            AnyManager::Kube(m) => m.leases().await,
        }
    }

    async fn acquire(
        &mut self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: SubnetKey,
    ) -> Result<OwnLease, SubnetError> {
        match self {
            AnyManager::Etcd(m) => m.acquire(cfg, attrs, previous).await,
            AnyManager::Kube(m) => m.acquire(cfg, attrs, previous).await,
        }
    }

    fn start(&mut self, own: &OwnLease, attrs: &LeaseAttrs, cfg: &NetworkConfig) -> Membership {
        match self {
            AnyManager::Etcd(m) => m.start(own, attrs, cfg),
            AnyManager::Kube(m) => m.start(own, attrs, cfg),
        }
    }

    async fn release(&mut self, own: &OwnLease) -> Result<(), SubnetError> {
        match self {
            AnyManager::Etcd(m) => m.release(own).await,
            AnyManager::Kube(m) => m.release(own).await,
        }
    }
}
