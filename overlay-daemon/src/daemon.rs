//! Start-up wiring: subnet manager (etcd), VXLAN backend + reconciler, traffic rules, subnet.env, health. Start-up
//! order follows flannel (docs/architecture.md, "Health and lifecycle"): config, lease, device, rules, subnet.env;
//! then the subnet manager's membership (lease keeper and watcher) and the link watcher feed the reconciler until
//! SIGTERM, which leaves all kernel state in place so a restart does not disturb traffic (same section).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use twill_files::subnet_env::{self, SubnetEnv};

use tokio::sync::mpsc;

use crate::backend::host_gw::{HostGwBackend, HostGwConfig};
use crate::backend::vxlan::mac_guard::MacGuard;
use crate::backend::vxlan::vtep_mac::MacIdentity;
use crate::backend::vxlan::{DeviceSpec, Vxlan, VxlanBackend, VxlanConfig};
use crate::backend::Backend;
use crate::blackhole::Blackhole;
use crate::config::{BackendKind, NetworkConfig};
use crate::flags::Options;
use crate::iface::{self, Underlay};
use crate::kernel_watch;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::rules::{RuleOptions, TrafficRules};
use crate::subnet::any::AnyManager;
use crate::subnet::lease_check::Expect;
use crate::subnet::{LeaseAttrs, LeaseEvent, OwnLease, SubnetError, SubnetManager};

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
struct Start {
    opts: Options,
    metrics: Arc<Metrics>,
    handle: twill_kernel::Handle,
    underlay: Underlay,
    subnets: AnyManager,
    cfg: NetworkConfig,
    grace: Duration,
    backoff: Backoff,
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

struct NoGuard;

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
    let public_ip = match opts.public_ip {
        Some(ip) => Some(ip),
        None => subnets.stored_public_ip().await,
    };
    let choice = iface::Choice {
        iface: opts.iface.clone(),
        iface_regex: opts.iface_regex.clone(),
        can_reach: opts.iface_can_reach,
    };
    let underlay = iface::select(&handle, &choice, public_ip).map_err(Fatal::Underlay)?;
    tracing::info!(
        "underlay {} (index {}, mtu {}), public IP {}",
        underlay.name,
        underlay.index,
        underlay.mtu,
        underlay.public_ip
    );
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

    let s = Start {
        opts,
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

async fn acquire(s: &mut Start, attrs: &LeaseAttrs) -> OwnLease {
    let (previous, _) = subnet_env::previous_subnets(&s.opts.subnet_file);
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

async fn run_host_gw(mut s: Start) -> Result<(), Fatal> {
    let u = s.underlay.clone();
    // Peers send to our PublicIP as the next hop: it must be an address of the underlay itself (behind NAT it
    // would not be reachable on the segment).
    if !u.networks.iter().any(|n| n.addr() == u.public_ip) {
        return Err(Fatal::Underlay(format!(
            "host-gw: public IP {} is not an address of {}; host-gw needs the nodes' own addresses on one L2 \
             segment",
            u.public_ip, u.name
        )));
    }
    let attrs = LeaseAttrs::host_gw(u.public_ip, &s.opts.node_name);
    let own = acquire(&mut s, &attrs).await;
    tracing::info!(subnet = %own.subnet, "acquired subnet {} (host-gw)", own.subnet);
    let backend = HostGwBackend::new(
        s.handle.clone(),
        HostGwConfig {
            underlay: u.name.clone(),
            underlay_index: u.index,
            underlay_networks: u.networks.clone(),
            network: s.cfg.network,
            subnet_len: s.cfg.subnet_len,
            own: own.subnet,
        },
        s.metrics.clone(),
    );
    // No encapsulation: pods get the underlay's MTU.
    serve(s, own, attrs, backend, u.mtu, u.name.clone(), NoGuard).await
}

async fn run_vxlan(mut s: Start) -> Result<(), Fatal> {
    let (cfg, underlay, handle) = (s.cfg.clone(), s.underlay.clone(), s.handle.clone());
    let outer_mtu = cfg.backend.mtu.unwrap_or(underlay.mtu);
    // VXLAN over IPv4 costs 50 bytes (docs/architecture.md, "VXLAN programming"); what is left must still carry an
    // IPv4 packet.
    if outer_mtu < 68 + 50 {
        return Err(Fatal::Underlay(format!(
            "MTU {outer_mtu} of {} leaves no room for VXLAN's 50 bytes; set Backend.MTU",
            underlay.name
        )));
    }
    // The MAC is chosen against the leases already in etcd, so it is not one another node uses.
    let leases = loop {
        match s.subnets.leases().await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!("listing leases: {e}; retrying");
                s.metrics.etcd_error(&e.to_string());
                s.backoff.wait().await;
            }
        }
    };
    let mut identity = MacIdentity::choose(
        &s.opts.node_name,
        underlay.public_ip,
        cfg.backend.vni,
        &leases,
        s.grace,
    );
    // A compatible device left by flanneld or an earlier run already carries a MAC peers know: keep it (the
    // device carries it before the lease publishes it, and ensure_device below keeps the device).
    let probe = DeviceSpec {
        name: cfg.backend.device_name(),
        vni: cfg.backend.vni,
        port: cfg.backend.port,
        learning: cfg.backend.learning,
        gbp: cfg.backend.gbp,
        local: underlay.public_ip.into(),
        underlay_index: underlay.index,
        mtu: outer_mtu - 50,
        mac: identity.mac(),
        address: std::net::Ipv4Addr::UNSPECIFIED.into(),
        network: cfg.network.into(),
    };
    let vxlan = Vxlan::new(handle.clone());
    let existing = vxlan.compatible_device_mac(&probe).unwrap_or_else(|e| {
        tracing::warn!("{e}: deriving the VTEP MAC");
        None
    });
    let kept = existing.is_some_and(|(_, m)| identity.keep_existing(m, &leases));
    let mac = identity.mac();
    if kept {
        tracing::info!("keeping the VTEP MAC {mac} of the existing {}", probe.name);
    } else if let Some((index, m)) = existing {
        tracing::info!(
            "the VTEP MAC {m} of the existing {} is in another node's lease or not unicast: using {mac}",
            probe.name
        );
        // The device gets the new MAC before the lease publishes it. Best effort: the reconciler sets it
        // again (or recreates the device) right after the lease.
        if let Err(e) = vxlan.set_link_mac(index, mac) {
            tracing::warn!("{e}");
        }
    }
    if !kept && identity.generation() > 0 {
        tracing::info!(
            "VTEP MAC of generation 0 is in another node's lease: using {mac} (generation {})",
            identity.generation()
        );
    }
    let attrs = LeaseAttrs::vxlan(underlay.public_ip, cfg.backend.vni, mac, &s.opts.node_name);
    let own = acquire(&mut s, &attrs).await;
    tracing::info!(
        "acquired subnet {} (VTEP MAC {mac}){}",
        own.subnet,
        if own.reservation {
            ", a reservation"
        } else {
            ""
        }
    );
    identity.set_own_subnet(own.subnet);

    let spec = DeviceSpec {
        mac,
        address: own.subnet.network().into(),
        ..probe
    };
    let backend = VxlanBackend::new(
        Vxlan::new(handle.clone()),
        VxlanConfig {
            spec: spec.clone(),
            own: own.subnet,
            subnet_len: cfg.subnet_len,
            direct_routing: cfg.backend.direct_routing,
            underlay_networks: underlay.networks.clone(),
        },
    );
    let mtu = spec.mtu;
    let guard = MacGuard::new(identity);
    serve(s, own, attrs, backend, mtu, spec.name, guard).await
}

/// The steady state, whatever the backend: reconciler, traffic rules, subnet.env, then lease and link events
/// until SIGTERM.
async fn serve<B: Backend>(
    s: Start,
    own: OwnLease,
    mut attrs: LeaseAttrs,
    backend: B,
    mtu: u32,
    link: String,
    mut guard: impl Guard<B>,
) -> Result<(), Fatal> {
    let Start {
        opts,
        metrics,
        handle,
        underlay,
        mut subnets,
        cfg,
        mut backoff,
        ..
    } = s;
    let expect = Expect {
        network: cfg.network,
        subnet_len: cfg.subnet_len,
        vni: cfg.backend.vni,
        own_public_ip: underlay.public_ip,
        kind: cfg.kind,
    };
    let mut reconciler = Reconciler::new(backend, own.subnet, expect, metrics.clone());
    while reconciler.full().await.is_none() {
        tracing::warn!(
            "{} not ready; retrying",
            reconciler.backend_mut().device_name()
        );
        backoff.wait().await;
    }

    let mut blackhole = opts
        .ip_blackhole_route
        .then(|| Blackhole::new(handle, own.subnet.into(), cfg.network.into()));
    if let Some(Err(e)) = blackhole.as_mut().map(Blackhole::start) {
        tracing::warn!("blackhole route for {}: {e}", own.subnet);
    }

    let mut rules = traffic_rules(&opts, &cfg, &own)?;
    for r in &mut rules {
        r.remove_other_backend();
        while let Err(e) = r.apply() {
            tracing::warn!("installing traffic rules: {e}; retrying");
            backoff.wait().await;
        }
    }
    metrics.set_ready(|r| r.rules = true);

    let env = SubnetEnv {
        networks_v4: vec![cfg.network],
        networks_v6: Vec::new(),
        subnet_v4: Some(subnet_env::gateway_v4(own.subnet)),
        subnet_v6: None,
        mtu,
        ipmasq: opts.ip_masq,
    };
    env.write(&opts.subnet_file).map_err(Fatal::SubnetFile)?;
    metrics.set_ready(|r| r.subnet_env = true);
    tracing::info!("wrote {}; ready", opts.subnet_file.display());

    let membership = subnets.start(&own, &attrs, &cfg);
    let (mut ev_rx, publish) = (membership.events, membership.publish);
    let kernel_watch::KernelWatch {
        link: mut link_rx,
        state: kernel,
    } = kernel_watch::watch_kernel(link, cfg.network)?;
    reconciler.set_full_every(opts.resync_full_every);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Fatal::Signal)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(Fatal::Signal)?;
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let mut rules_check = tokio::time::interval(opts.iptables_resync);
    rules_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rules_check.tick().await;
    loop {
        tokio::select! {
            Some((at, ev)) = ev_rx.recv() => {
                let check = guard.wants(&ev);
                reconciler.apply(ev, at).await;
                if check {
                    guard.check(&mut reconciler, &mut attrs, &publish, &metrics).await;
                }
            }
            Some(()) = link_rx.recv() => {
                while link_rx.try_recv().is_ok() {}
                reconciler.full().await;
                kernel.set_device(reconciler.device().unwrap_or(0));
            }
            _ = resync.tick() => {
                // The guard's check is linear in the peers and depends only on them: it runs with every full
                // pass (which every lease event causes) and while it reports a problem.
                let full = reconciler.resync(kernel.take_dirty()).await;
                kernel.set_device(reconciler.device().unwrap_or(0));
                if full || guard.alarmed() {
                    guard.check(&mut reconciler, &mut attrs, &publish, &metrics).await;
                }
                if let Some(b) = blackhole.as_mut() {
                    // Only while the subnet is ours: once another node holds it, its pods are there.
                    if let Err(e) = b.ensure(!metrics.readiness().lease_lost) {
                        tracing::warn!("blackhole route for {}: {e}", own.subnet);
                    }
                }
            }
            _ = rules_check.tick(), if !rules.is_empty() => check_rules(&mut rules, &metrics),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("signal received: exiting, leaving kernel state in place");
    Ok(())
}

/// flanneld's traffic rules for the node's lease, one set per family.
fn traffic_rules(
    opts: &Options,
    cfg: &NetworkConfig,
    own: &OwnLease,
) -> Result<Vec<TrafficRules>, Fatal> {
    let options = RuleOptions {
        masquerade: opts.ip_masq,
        forward: opts.iptables_forward_rules,
        fully_random: !opts.ip_masq_fully_random_disable,
    };
    if !options.any() {
        return Ok(Vec::new());
    }
    let v4 = TrafficRules::new(
        opts.rules_backend,
        cfg.network.into(),
        own.subnet.into(),
        options,
    )?;
    Ok(vec![v4])
}

/// Checks every rule set, reinstalling a damaged one (flanneld rebuilds all rules when one is missing).
fn check_rules(rules: &mut [TrafficRules], metrics: &Metrics) {
    let mut ok = true;
    for r in rules {
        match r.ensure() {
            Ok(true) => {
                metrics.rules_repairs.fetch_add(1, Relaxed);
                tracing::warn!("traffic rules were damaged: reinstalled");
            }
            Ok(false) => tracing::debug!(family = ?r.family(), "traffic rules intact"),
            Err(e) => {
                ok = false;
                tracing::warn!("traffic rules: {e}");
            }
        }
    }
    metrics.set_ready(|r| r.rules = ok);
}
