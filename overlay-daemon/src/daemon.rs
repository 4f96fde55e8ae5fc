//! Start-up wiring: subnet manager (etcd), VXLAN backend + reconciler, traffic rules, subnet.env, health. Start-up
//! order follows flannel (docs/architecture.md, "Health and lifecycle"): config, lease, device, rules, subnet.env;
//! then the subnet manager's membership (lease keeper and watcher) and the link watcher feed the reconciler until
//! SIGTERM, which leaves all kernel state in place so a restart does not disturb traffic (same section).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use twill_files::subnet_env::{self, SubnetEnv};

use tokio::sync::mpsc;

use crate::backend::host_gw::{HostGwBackend, HostGwConfig};
use crate::backend::vxlan::mac_guard::MacGuard;
use crate::backend::vxlan::vtep_mac::MacIdentity;
use crate::backend::vxlan::{DeviceSpec, Vxlan, VxlanBackend, VxlanConfig};
use crate::backend::Backend;
use crate::blackhole::Blackhole;
use crate::config::{BackendKind, NetworkConfig, Pool};
use crate::family::Family;
use crate::flags::Options;
use crate::iface::{self, Underlay};
use crate::lane::{self, Lane};
use crate::metrics::{Metrics, Slot};
use crate::reconcile::Reconciler;
use crate::rules::{RuleOptions, TrafficRules};
use crate::subnet::etcd::EtcdManager;
use crate::subnet::lease_check::Expect;
use crate::subnet::{
    Lease, LeaseAttrs, LeaseEvent, OwnLease, SubnetError, SubnetKey, SubnetManager,
};

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
pub type Fatal = String;

pub fn log(msg: impl std::fmt::Display) {
    eprintln!("twilld: {msg}");
}

/// What every backend's start-up shares once the network config is known.
struct Start {
    opts: Options,
    metrics: Arc<Metrics>,
    handle: twill_kernel::Handle,
    underlay: Underlay,
    subnets: EtcdManager,
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
        let listener =
            crate::http::bind(addr).map_err(|e| format!("binding healthz address {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, listener_metrics).await {
                log(format!("healthz server on {addr} failed: {e}"));
            }
        });
    }

    let handle = twill_kernel::Handle::current().map_err(|e| e.to_string())?;

    // etcd unreachable at start: keep trying, say so (docs/architecture.md, "Health and lifecycle").
    let grace = (opts.resync * 3).clamp(Duration::from_secs(3), Duration::from_secs(60));
    let mut backoff = Backoff::new();
    let mut subnets = loop {
        match EtcdManager::connect(&opts, metrics.clone(), grace.max(Duration::from_secs(5))).await
        {
            Ok(m) => break m,
            Err(e) => {
                log(format!(
                    "cannot reach etcd at {}: {e}; retrying",
                    opts.etcd_endpoints.join(",")
                ));
                metrics.etcd_error(&e.to_string());
                backoff.wait().await;
            }
        }
    };
    let cfg = loop {
        match subnets.network_config().await {
            Ok(cfg) => break cfg,
            Err(SubnetError::ConfigInvalid(e)) => return Err(e),
            Err(e) => {
                log(format!("{e}; retrying"));
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
        public_ip: opts.public_ip,
        public_ipv6: opts.public_ipv6,
    };
    let choice = iface::Choice {
        iface: opts.iface.clone(),
        iface_regex: opts.iface_regex.clone(),
        can_reach: opts.iface_can_reach,
    };
    let underlay = iface::select(&handle, &choice, want)?;
    let show = |ip: Option<String>| ip.unwrap_or_else(|| "none".into());
    log(format!(
        "underlay {} (index {}, mtu {}), public IP {}, public IPv6 {}",
        underlay.name,
        underlay.index,
        underlay.mtu,
        show(underlay.public_ip.map(|a| a.to_string())),
        show(underlay.public_ipv6.map(|a| a.to_string())),
    ));

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
    let (v4, v6) = subnet_env::previous_subnets(&s.opts.subnet_file);
    let previous = SubnetKey { v4, v6 };
    let own = loop {
        match s.subnets.acquire(&s.cfg, attrs, previous).await {
            Ok(l) => break l,
            Err(e @ SubnetError::Unavailable(_)) => {
                log(format!("acquiring a lease: {e}; retrying"));
                s.metrics.etcd_error(&e.to_string());
                s.backoff.wait().await;
            }
            Err(e) => {
                log(format!("acquiring a lease: {e}; retrying in 10 s"));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    s.metrics.etcd_ok();
    s.metrics.set_ready(|r| r.lease = true);
    own
}

fn lease_log(own: &OwnLease) -> &'static str {
    if own.reservation {
        ", a reservation"
    } else {
        ""
    }
}

async fn run_host_gw(mut s: Start) -> Result<(), Fatal> {
    let u = s.underlay.clone();
    // Peers send to our public address as the next hop: it must be an address of the underlay itself (behind
    // NAT it would not be reachable on the segment).
    if let Some(ip) = u
        .public_ip
        .filter(|ip| !u.networks.iter().any(|n| n.addr() == *ip))
    {
        return Err(format!(
            "host-gw: public IP {ip} is not an address of {}; host-gw needs the nodes' own addresses on one L2 \
             segment",
            u.name
        ));
    }
    if let Some(ip) = u
        .public_ipv6
        .filter(|ip| !u.networks_v6.iter().any(|n| n.addr() == *ip))
    {
        return Err(format!(
            "host-gw: public IPv6 {ip} is not an address of {}; host-gw needs the nodes' own addresses on one \
             L2 segment",
            u.name
        ));
    }
    let attrs = LeaseAttrs::host_gw(u.public_ip, u.public_ipv6, &s.opts.node_name);
    let own = acquire(&mut s, &attrs).await;
    log(format!(
        "acquired subnet {} (host-gw){}",
        own.key,
        lease_log(&own)
    ));
    let lane4 = match (s.cfg.v4, own.key.v4) {
        (Some(pool), Some(own4)) => Some(host_gw_lane(&s, pool, own4, u.public_ip, &u.networks)),
        _ => None,
    };
    let lane6 = match (s.cfg.v6, own.key.v6) {
        (Some(pool), Some(own6)) => {
            Some(host_gw_lane(&s, pool, own6, u.public_ipv6, &u.networks_v6))
        }
        _ => None,
    };
    // No encapsulation: pods get the underlay's MTU.
    match lane4 {
        Some(l4) => serve(s, own, attrs, Some(l4), lane6, u.mtu, NoGuard).await,
        None => {
            serve::<HostGwBackend<Ipv6Net>, HostGwBackend<Ipv6Net>>(
                s, own, attrs, lane6, None, u.mtu, NoGuard,
            )
            .await
        }
    }
}

fn host_gw_lane<N: Family, M: Copy + Into<IpNet>>(
    s: &Start,
    pool: Pool<N>,
    own: N,
    public: Option<N::Addr>,
    networks: &[M],
) -> LaneSpec<HostGwBackend<N>> {
    let u = &s.underlay;
    let backend = HostGwBackend::new(
        s.handle.clone(),
        HostGwConfig {
            underlay: u.name.clone(),
            underlay_index: u.index,
            underlay_networks: networks.iter().map(|n| (*n).into()).collect(),
            network: pool.network,
            subnet_len: pool.subnet_len,
            own,
        },
        s.metrics.clone(),
    );
    LaneSpec {
        backend,
        own,
        pool,
        own_public_ip: public,
        link: u.name.clone(),
    }
}

/// One family's VXLAN device as planned before the lease: its VTEP MAC and its spec.
struct VxlanPlan {
    identity: MacIdentity,
    probe: DeviceSpec,
}

/// VXLAN over IPv4 costs 50 bytes, over IPv6 70 (docs/architecture.md, "VXLAN programming").
fn vxlan_overhead(public: IpAddr) -> u32 {
    if public.is_ipv6() {
        70
    } else {
        50
    }
}

/// Chooses the VTEP MAC of the device `name` (underlay address `public`): derived, unless a compatible device
/// left by flanneld or an earlier run already carries a MAC peers know and no other node's lease has it.
fn plan_vxlan_device(
    s: &Start,
    leases: &[Lease],
    name: String,
    public: IpAddr,
    network: IpNet,
) -> Result<VxlanPlan, Fatal> {
    let cfg = &s.cfg;
    let outer_mtu = cfg.backend.mtu.unwrap_or(s.underlay.mtu);
    let overhead = vxlan_overhead(public);
    // What is left must still carry an IPv4 packet (IPv6's minimum MTU is 1280).
    let least = if public.is_ipv6() { 1280 } else { 68 };
    if outer_mtu < least + overhead {
        return Err(format!(
            "MTU {outer_mtu} of {} leaves no room for VXLAN's {overhead} bytes on {name}; set Backend.MTU",
            s.underlay.name
        ));
    }
    let mut identity =
        MacIdentity::choose(&s.opts.node_name, public, cfg.backend.vni, leases, s.grace);
    let probe = DeviceSpec {
        name,
        vni: cfg.backend.vni,
        port: cfg.backend.port,
        learning: cfg.backend.learning,
        gbp: cfg.backend.gbp,
        local: public,
        underlay_index: s.underlay.index,
        mtu: outer_mtu - overhead,
        mac: identity.mac(),
        address: if public.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        },
        network,
    };
    let vxlan = Vxlan::new(s.handle.clone());
    let existing = vxlan.compatible_device_mac(&probe).unwrap_or_else(|e| {
        log(format!("{e}: deriving the VTEP MAC"));
        None
    });
    let kept = existing.is_some_and(|(_, m)| identity.keep_existing(m, leases));
    let mac = identity.mac();
    if kept {
        log(format!(
            "keeping the VTEP MAC {mac} of the existing {}",
            probe.name
        ));
    } else if let Some((index, m)) = existing {
        log(format!(
            "the VTEP MAC {m} of the existing {} is in another node's lease or not unicast: using {mac}",
            probe.name
        ));
        // The device gets the new MAC before the lease publishes it. Best effort: the reconciler sets it
        // again (or recreates the device) right after the lease.
        if let Err(e) = vxlan.set_link_mac(index, mac) {
            log(e);
        }
    }
    if !kept && identity.generation() > 0 {
        log(format!(
            "VTEP MAC of generation 0 is in another node's lease: using {mac} for {} (generation {})",
            probe.name,
            identity.generation()
        ));
    }
    Ok(VxlanPlan {
        identity,
        probe: DeviceSpec { mac, ..probe },
    })
}

fn vxlan_lane<N: Family, M: Copy + Into<IpNet>>(
    s: &Start,
    plan: &VxlanPlan,
    pool: Pool<N>,
    own: N,
    public: N::Addr,
    networks: &[M],
) -> LaneSpec<VxlanBackend<N>> {
    let spec = DeviceSpec {
        address: own.network_addr().into(),
        ..plan.probe.clone()
    };
    let link = spec.name.clone();
    let backend = VxlanBackend::new(
        Vxlan::new(s.handle.clone()),
        VxlanConfig {
            spec,
            own,
            subnet_len: pool.subnet_len,
            direct_routing: s.cfg.backend.direct_routing,
            underlay_networks: networks.iter().map(|n| (*n).into()).collect(),
        },
    );
    LaneSpec {
        backend,
        own,
        pool,
        own_public_ip: Some(public),
        link,
    }
}

async fn run_vxlan(mut s: Start) -> Result<(), Fatal> {
    let (cfg, underlay) = (s.cfg.clone(), s.underlay.clone());
    // The MACs are chosen against the leases already in etcd, so they are not ones another node uses.
    let leases = loop {
        match s.subnets.leases().await {
            Ok(l) => break l,
            Err(e) => {
                log(format!("listing leases: {e}; retrying"));
                s.metrics.etcd_error(&e.to_string());
                s.backoff.wait().await;
            }
        }
    };
    let v4 = match (cfg.v4, underlay.public_ip) {
        (Some(pool), Some(ip)) => {
            let p = plan_vxlan_device(
                &s,
                &leases,
                cfg.backend.device_name(),
                ip.into(),
                pool.network.into(),
            )?;
            Some((pool, ip, p))
        }
        _ => None,
    };
    let v6 = match (cfg.v6, underlay.public_ipv6) {
        (Some(pool), Some(ip)) => {
            let name = format!("flannel-v6.{}", cfg.backend.vni);
            let p = plan_vxlan_device(&s, &leases, name, ip.into(), pool.network.into())?;
            Some((pool, ip, p))
        }
        _ => None,
    };
    let attrs = LeaseAttrs::vxlan(
        v4.as_ref().map(|(_, ip, p)| (*ip, p.probe.mac)),
        v6.as_ref().map(|(_, ip, p)| (*ip, p.probe.mac)),
        cfg.backend.vni,
        &s.opts.node_name,
    );
    let own = acquire(&mut s, &attrs).await;
    let macs: Vec<String> = v4
        .iter()
        .map(|(_, _, p)| format!("{} {}", p.probe.name, p.probe.mac))
        .chain(
            v6.iter()
                .map(|(_, _, p)| format!("{} {}", p.probe.name, p.probe.mac)),
        )
        .collect();
    log(format!(
        "acquired subnet {} (VTEP MAC {}){}",
        own.key,
        macs.join(", "),
        lease_log(&own)
    ));
    let missing = |family: &str| format!("the lease {} has no {family} subnet", own.key);
    let lane4 = match v4 {
        Some((pool, ip, mut plan)) => {
            let own4 = own.key.v4.ok_or_else(|| missing("IPv4"))?;
            plan.identity.set_own_subnet(own4.into());
            Some((
                vxlan_lane(&s, &plan, pool, own4, ip, &underlay.networks),
                plan,
            ))
        }
        None => None,
    };
    let lane6 = match v6 {
        Some((pool, ip, mut plan)) => {
            let own6 = own.key.v6.ok_or_else(|| missing("IPv6"))?;
            plan.identity.set_own_subnet(own6.into());
            Some((
                vxlan_lane(&s, &plan, pool, own6, ip, &underlay.networks_v6),
                plan,
            ))
        }
        None => None,
    };
    // Pods get one MTU: the smaller of the devices'.
    let mtu = lane4
        .iter()
        .map(|(_, p)| p.probe.mtu)
        .chain(lane6.iter().map(|(_, p)| p.probe.mtu))
        .min()
        .unwrap_or(underlay.mtu);
    // The VTEP MAC guard runs on the first lane (the IPv4 device's, or the IPv6 one on an IPv6-only network);
    // the IPv6 device of a dual-stack node gets its MAC chosen against the leases at start-up.
    match (lane4, lane6) {
        (Some((l4, p4)), l6) => {
            let guard = MacGuard::new(p4.identity);
            serve(s, own, attrs, Some(l4), l6.map(|(l, _)| l), mtu, guard).await
        }
        (None, Some((l6, p6))) => {
            let guard = MacGuard::new(p6.identity);
            serve::<VxlanBackend<Ipv6Net>, VxlanBackend<Ipv6Net>>(
                s,
                own,
                attrs,
                Some(l6),
                None,
                mtu,
                guard,
            )
            .await
        }
        (None, None) => {
            Err("the network runs no family this node has an underlay address of".into())
        }
    }
}

/// One family's backend, ready to serve.
struct LaneSpec<B: Backend> {
    backend: B,
    /// Our subnet of the family.
    own: B::Net,
    pool: Pool<B::Net>,
    own_public_ip: Option<<B::Net as Family>::Addr>,
    /// The device whose changes ask for a full pass.
    link: String,
}

impl<B: Backend> LaneSpec<B> {
    fn into_lane(self, cfg: &NetworkConfig, metrics: &Arc<Metrics>, slot: Slot) -> Lane<B> {
        let expect = Expect {
            network: self.pool.network,
            subnet_len: self.pool.subnet_len,
            vni: cfg.backend.vni,
            own_public_ip: self.own_public_ip,
            kind: cfg.kind,
        };
        Lane::new(
            Reconciler::new(self.backend, self.own, expect, metrics.clone(), slot),
            self.link,
            self.pool.network.into(),
        )
    }
}

/// The steady state, whatever the backend: one lane per family (the first carries the backend's guard; a
/// dual-stack node's second is its IPv6 lane), traffic rules, subnet.env, then lease and link events until
/// SIGTERM.
async fn serve<A: Backend, B: Backend>(
    s: Start,
    own: OwnLease,
    mut attrs: LeaseAttrs,
    first: Option<LaneSpec<A>>,
    second: Option<LaneSpec<B>>,
    mtu: u32,
    mut guard: impl Guard<A>,
) -> Result<(), Fatal> {
    let Start {
        opts,
        metrics,
        handle,
        mut subnets,
        cfg,
        mut backoff,
        ..
    } = s;
    let mut first = first.map(|l| l.into_lane(&cfg, &metrics, Slot::Primary));
    let slot2 = if first.is_some() {
        Slot::DualStackV6
    } else {
        Slot::Primary
    };
    let mut second = second.map(|l| l.into_lane(&cfg, &metrics, slot2));
    if let Some(l) = &mut first {
        l.bring_up(&mut backoff).await;
    }
    if let Some(l) = &mut second {
        l.bring_up(&mut backoff).await;
    }

    // A blackhole route per family for our subnet, while the lease is held.
    let mut blackholes: Vec<Blackhole> = if opts.ip_blackhole_route {
        let pairs = [
            own.key
                .v4
                .zip(cfg.v4_network())
                .map(|(s, n)| (IpNet::from(s), IpNet::from(n))),
            own.key
                .v6
                .zip(cfg.v6_network())
                .map(|(s, n)| (IpNet::from(s), IpNet::from(n))),
        ];
        pairs
            .into_iter()
            .flatten()
            .map(|(s, n)| Blackhole::new(handle.clone(), s, n))
            .collect()
    } else {
        Vec::new()
    };
    for b in &mut blackholes {
        if let Err(e) = b.start() {
            log(format!("blackhole route for {}: {e}", own.key));
        }
    }

    let mut rules = traffic_rules(&opts, &cfg, &own)?;
    for r in &mut rules {
        r.remove_other_backend();
        while let Err(e) = r.apply() {
            log(format!("installing traffic rules: {e}; retrying"));
            backoff.wait().await;
        }
    }
    metrics.set_ready(|r| r.rules = true);

    let env = SubnetEnv {
        networks_v4: cfg.v4_network().into_iter().collect(),
        networks_v6: cfg.v6_network().into_iter().collect(),
        subnet_v4: own.key.v4.map(subnet_env::gateway_v4),
        subnet_v6: own.key.v6.map(subnet_env::gateway_v6),
        mtu,
        ipmasq: opts.ip_masq,
    };
    env.write(&opts.subnet_file)
        .map_err(|e| format!("writing {}: {e}", opts.subnet_file.display()))?;
    metrics.set_ready(|r| r.subnet_env = true);
    log(format!("wrote {}; ready", opts.subnet_file.display()));

    let membership = subnets.start(&own, &attrs, &cfg);
    let (mut ev_rx, publish) = (membership.events, membership.publish);
    if let Some(l) = &mut first {
        l.watch(opts.resync_full_every)?;
    }
    if let Some(l) = &mut second {
        l.watch(opts.resync_full_every)?;
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("installing SIGINT handler: {e}"))?;
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
                // Cloned only on a dual-stack node, for the lane that does not get the original.
                let (ev1, ev2) = match (&first, &second) {
                    (Some(_), Some(_)) => (Some(ev.clone()), Some(ev)),
                    (Some(_), None) => (Some(ev), None),
                    _ => (None, Some(ev)),
                };
                if let (Some(l), Some(ev)) = (&mut second, ev2) {
                    l.apply(ev, at).await;
                }
                if let (Some(l), Some(ev)) = (&mut first, ev1) {
                    l.apply(ev, at).await;
                    if check {
                        guard.check(&mut l.rec, &mut attrs, &publish, &metrics).await;
                    }
                }
            }
            Some(()) = lane::link_changed(&mut first) => {
                if let Some(l) = &mut first {
                    l.on_link().await;
                }
            }
            Some(()) = lane::link_changed(&mut second) => {
                if let Some(l) = &mut second {
                    l.on_link().await;
                }
            }
            _ = resync.tick() => {
                if let Some(l) = &mut second {
                    l.resync().await;
                }
                if let Some(l) = &mut first {
                    // The guard's check is linear in the peers and depends only on them: it runs with every
                    // full pass (which every lease event causes) and while it reports a problem.
                    let full = l.resync().await;
                    if full || guard.alarmed() {
                        guard.check(&mut l.rec, &mut attrs, &publish, &metrics).await;
                    }
                }
                for b in &mut blackholes {
                    // Only while the subnet is ours: once another node holds it, its pods are there.
                    if let Err(e) = b.ensure(!metrics.readiness().lease_lost) {
                        log(format!("blackhole route for {}: {e}", own.key));
                    }
                }
            }
            _ = rules_check.tick(), if !rules.is_empty() => check_rules(&mut rules, &metrics),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    log("signal received: exiting, leaving kernel state in place");
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
    // One rule set per family the node runs, each with its family's network and our subnet in it.
    let pairs = [
        cfg.v4_network()
            .zip(own.key.v4)
            .map(|(n, s)| (IpNet::from(n), IpNet::from(s))),
        cfg.v6_network()
            .zip(own.key.v6)
            .map(|(n, s)| (IpNet::from(n), IpNet::from(s))),
    ];
    pairs
        .into_iter()
        .flatten()
        .map(|(network, subnet)| {
            TrafficRules::new(opts.rules_backend, network, subnet, options)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Checks every rule set, reinstalling a damaged one (flanneld rebuilds all rules when one is missing).
fn check_rules(rules: &mut [TrafficRules], metrics: &Metrics) {
    let mut ok = true;
    for r in rules {
        match r.ensure() {
            Ok(true) => {
                metrics.rules_repairs.fetch_add(1, Relaxed);
                log("traffic rules were damaged: reinstalled");
            }
            Ok(false) => {}
            Err(e) => {
                ok = false;
                log(format!("traffic rules: {e}"));
            }
        }
    }
    metrics.set_ready(|r| r.rules = ok);
}
