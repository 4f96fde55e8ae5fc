//! Start-up wiring: health, subnet manager (etcd or the Kubernetes API), network config, underlay; then the backend's start-up
//! ([`crate::bring_up`]) and the steady state ([`crate::serve`]). Start-up order follows flannel
//! (docs/architecture.md, "Health and lifecycle"): config, lease, device, rules, subnet.env; then the subnet
//! manager's membership (lease keeper and watcher) and the link watchers feed the reconcilers until SIGTERM, which
//! leaves all kernel state in place so a restart does not disturb traffic (same section).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use twill_files::subnet_env;

use crate::backend::Backend;
use crate::bring_up::{run_host_gw, run_vxlan};
use crate::config::{BackendKind, NetworkConfig};
use crate::flags::Options;
use crate::iface::{self, Underlay};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::subnet::any::AnyManager;
use crate::subnet::{LeaseAttrs, LeaseEvent, OwnLease, SubnetError, SubnetKey, SubnetManager};

/// Exponential backoff 100 ms -> 5 s, as flannel's watch reconnect (docs/architecture.md, "Watching leases").
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// A fatal start-up error (exit non-zero).
pub type Fatal = crate::error::Error;

/// What every backend's start-up shares once the network config is known.
pub(crate) struct Start {
    pub opts: Options,
    /// Our node's name (in Kubernetes mode possibly learnt from our Pod at connect).
    pub node_name: String,
    pub metrics: Arc<Metrics>,
    pub handle: twill_kernel::Handle,
    pub underlay: Underlay,
    pub subnets: AnyManager,
    pub cfg: NetworkConfig,
    pub grace: Duration,
    pub backoff: Backoff,
}

/// A backend's extra check on the peer table, run after lease events it cares about and on every resync (VXLAN:
/// the VTEP MAC guard).
pub trait Guard<B: Backend> {
    fn wants(&self, ev: &LeaseEvent) -> bool;
    /// Whether the guard is reporting a problem, so even a resync that skips the read-back must run it.
    fn alarmed(&self) -> bool;
    fn check(
        &mut self,
        reconciler: &mut Reconciler<B>,
        attrs: &mut LeaseAttrs,
        publish: &mpsc::Sender<LeaseAttrs>,
        metrics: &Metrics,
    ) -> impl std::future::Future<Output = ()>;
}

pub(crate) struct NoGuard;

impl<B: Backend> Guard<B> for NoGuard {
    fn wants(&self, _: &LeaseEvent) -> bool {
        false
    }
    fn alarmed(&self) -> bool {
        false
    }
    async fn check(
        &mut self,
        _: &mut Reconciler<B>,
        _: &mut LeaseAttrs,
        _: &mpsc::Sender<LeaseAttrs>,
        _: &Metrics,
    ) {
    }
}

pub async fn run(opts: Options) -> Result<(), Fatal> {
    let metrics = Arc::new(Metrics::default());
    if opts.healthz_port != 0 {
        let addr = SocketAddr::new(opts.healthz_ip, opts.healthz_port);
        let listener_metrics = metrics.clone();
        let listener = crate::http::bind(addr).map_err(|source| Fatal::Healthz { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, listener_metrics).await {
                tracing::warn!("healthz server on {addr} failed: {e}");
            }
        });
    }

    let handle = twill_kernel::Handle::current().map_err(Fatal::Kernel)?;
    if let crate::node_name::NodeName::Known { name, from } = &opts.node {
        tracing::info!("node name {name} (from {from})");
    }
    // etcd (or the API server) unreachable at start: keep trying, say so (docs/architecture.md, "Health and
    // lifecycle").
    let grace = (opts.resync * 3).clamp(Duration::from_secs(3), Duration::from_secs(60));
    let mut backoff = Backoff::new();
    let mut subnets = loop {
        match AnyManager::connect(&opts, metrics.clone(), grace.max(Duration::from_secs(5))).await {
            Ok(m) => break m,
            Err(SubnetError::ConfigInvalid(e)) => return Err(Fatal::Config(e)),
            Err(e) => {
                tracing::warn!("{e}; retrying");
                metrics.etcd_error(&e.to_string());
                backoff.wait().await;
            }
        }
    };
    let node_name = subnets.node_name(&opts).to_string();
    // In Kubernetes mode an administrator may have stored the node's public addresses in its annotations.
    let public_ip = match opts.public_ip {
        Some(ip) => Some(ip),
        None => subnets.stored_public_ip().await,
    };
    let public_ipv6 = match opts.public_ipv6 {
        Some(ip) => Some(ip),
        None => subnets.stored_public_ipv6().await,
    };
    let cfg = loop {
        match subnets.network_config().await {
            Ok(cfg) => break cfg,
            Err(SubnetError::ConfigInvalid(e)) => return Err(Fatal::Config(e)),
            Err(e) => {
                tracing::warn!("{e}; retrying");
                metrics.etcd_error(&e.to_string());
                if matches!(e, SubnetError::ConfigMissing(_)) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    backoff.wait().await;
                }
            }
        }
    };
    metrics.etcd_ok();
    backoff.reset();

    // The underlay's addresses of each family the network runs.
    let want = iface::Want {
        v4: cfg.v4.is_some(),
        v6: cfg.v6.is_some(),
        public_ip,
        public_ipv6,
    };
    let choice = iface::Choice {
        iface: opts.iface.clone(),
        iface_regex: opts.iface_regex.clone(),
        can_reach: opts.iface_can_reach,
    };
    let underlay = iface::select(&handle, &choice, want).map_err(Fatal::Underlay)?;
    let show = |ip: Option<String>| ip.unwrap_or_else(|| "none".into());
    tracing::info!(
        "underlay {} (index {}, mtu {}), public IP {}, public IPv6 {}",
        underlay.name,
        underlay.index,
        underlay.mtu,
        show(underlay.public_ip.map(|a| a.to_string())),
        show(underlay.public_ipv6.map(|a| a.to_string())),
    );

    let s = Start {
        opts,
        node_name,
        metrics,
        handle,
        underlay,
        subnets,
        cfg,
        grace,
        backoff,
    };
    match s.cfg.kind {
        BackendKind::Vxlan => run_vxlan(s).await,
        BackendKind::HostGw => run_host_gw(s).await,
    }
}

pub(crate) async fn acquire(s: &mut Start, attrs: &LeaseAttrs) -> OwnLease {
    let (v4, v6) = subnet_env::previous_subnets(&s.opts.subnet_file);
    let previous = SubnetKey { v4, v6 };
    let own = loop {
        match s.subnets.acquire(&s.cfg, attrs, previous).await {
            Ok(l) => break l,
            Err(e @ SubnetError::Unavailable(_)) => {
                tracing::warn!("acquiring a lease: {e}; retrying");
                s.metrics.etcd_error(&e.to_string());
                s.backoff.wait().await;
            }
            Err(e) => {
                tracing::warn!("acquiring a lease: {e}; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    s.metrics.etcd_ok();
    s.metrics.set_ready(|r| r.lease = true);
    own
}

pub(crate) fn lease_log(own: &OwnLease) -> &'static str {
    if own.reservation {
        ", a reservation"
    } else {
        ""
    }
}
