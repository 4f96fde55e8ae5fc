//! Wires the parts together: subnet manager (etcd), VXLAN backend + reconciler, traffic rules, subnet.env,
//! health. Start-up order follows flannel (flannel.md §1): config, lease, device, rules, subnet.env; then the
//! lease keeper, the lease watcher and the link watcher feed the reconciler until SIGTERM, which leaves all
//! kernel state in place so a restart does not disturb traffic (flannel.md §11).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;

use crate::acquire::{acquire, AcquireError, OwnLease};
use crate::config::NetworkConfig;
use crate::flags::Options;
use crate::iface;
use crate::lease::{LeaseAttrs, VtepMac};
use crate::membership::{watch_leases, LeaseKeeper, OwnEvent};
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, ReconcilerConfig};
use crate::registry::{LeaseEvent, Registry, RegistryError};
use crate::rules::TrafficRules;
use crate::subnet_env::{previous_subnet, SubnetEnv};
use crate::vtep_mac::MacIdentity;
use crate::vxlan::{DeviceSpec, Vxlan};

/// Exponential backoff 100 ms -> 5 s, as flannel's watch reconnect (flannel.md §5).
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

    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening netlink socket: {e}"))?;
    tokio::spawn(conn);
    let underlay = iface::select(&handle, &opts.iface, opts.public_ip).await?;
    log(format!(
        "underlay {} (index {}, mtu {}), public IP {}",
        underlay.name, underlay.index, underlay.mtu, underlay.public_ip
    ));

    // etcd unreachable at start: keep trying, say so (flannel.md §12; issue: "retries with backoff").
    let mut backoff = Backoff::new();
    let mut registry = loop {
        match Registry::connect(&opts).await {
            Ok(r) => break r,
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
        match registry.config().await {
            Ok(text) => break NetworkConfig::parse(&text).map_err(|e| e.to_string())?,
            Err(e) => {
                log(format!("{e}; retrying"));
                metrics.etcd_error(&e.to_string());
                if matches!(e, RegistryError::ConfigMissing(_)) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    backoff.wait().await;
                }
            }
        }
    };
    metrics.etcd_ok();
    backoff.reset();

    let outer_mtu = cfg.backend.mtu.unwrap_or(underlay.mtu);
    // VXLAN over IPv4 costs 50 bytes (flannel.md §6.3); what is left must still carry an IPv4 packet.
    if outer_mtu < 68 + 50 {
        return Err(format!(
            "MTU {outer_mtu} of {} leaves no room for VXLAN's 50 bytes; set Backend.MTU",
            underlay.name
        ));
    }
    // The MAC is chosen against the leases already in etcd, so it is not one another node uses.
    let leases = loop {
        match registry.list().await {
            Ok((l, _)) => break l,
            Err(e) => {
                log(format!("listing leases: {e}; retrying"));
                metrics.etcd_error(&e.to_string());
                backoff.wait().await;
            }
        }
    };
    let grace = (opts.resync * 3).clamp(Duration::from_secs(3), Duration::from_secs(60));
    let mut identity = MacIdentity::choose(
        &opts.node_name,
        underlay.public_ip,
        cfg.backend.vni,
        &leases,
        grace,
    );
    let mac = identity.mac();
    if identity.generation() > 0 {
        log(format!(
            "VTEP MAC of generation 0 is in another node's lease: using {mac} (generation {})",
            identity.generation()
        ));
    }
    let attrs = LeaseAttrs::vxlan(underlay.public_ip, cfg.backend.vni, mac, &opts.node_name);
    let previous = previous_subnet(&opts.subnet_file);
    let own = loop {
        match acquire(&mut registry, &cfg, &attrs, previous, opts.lease_ttl).await {
            Ok(l) => break l,
            Err(AcquireError::Etcd(e)) => {
                log(format!("acquiring a lease: {e}; retrying"));
                metrics.etcd_error(&e.to_string());
                backoff.wait().await;
            }
            Err(e) => {
                log(format!("acquiring a lease: {e}; retrying in 10 s"));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    metrics.etcd_ok();
    log(format!(
        "acquired subnet {} (VTEP MAC {mac}){}",
        own.subnet,
        if own.lease_id == 0 {
            ", a reservation"
        } else {
            ""
        }
    ));
    metrics.set_ready(|r| r.lease = true);
    set_expiry(&metrics, &own, opts.lease_ttl);
    identity.set_own_subnet(own.subnet);

    let spec = DeviceSpec {
        name: cfg.backend.device_name(),
        vni: cfg.backend.vni,
        port: cfg.backend.port,
        learning: cfg.backend.learning,
        gbp: cfg.backend.gbp,
        local: underlay.public_ip,
        underlay_index: underlay.index,
        mtu: outer_mtu - 50,
        mac,
        address: own.subnet.network(),
        network: cfg.network,
    };
    let mut reconciler = Reconciler::new(
        Vxlan::new(handle.clone()),
        ReconcilerConfig {
            spec: spec.clone(),
            own: own.subnet,
            subnet_len: cfg.subnet_len,
            direct_routing: cfg.backend.direct_routing,
            underlay_networks: underlay.networks.clone(),
        },
        metrics.clone(),
    );
    while reconciler.full().await.is_none() {
        log("vxlan device not ready; retrying");
        backoff.wait().await;
    }

    let rules = opts.ip_masq.then_some(TrafficRules {
        backend: opts.rules_backend,
        network: cfg.network,
        subnet: own.subnet,
    });
    if let Some(r) = &rules {
        r.remove_other_backend().await;
        while let Err(e) = r.apply().await {
            log(format!("installing traffic rules: {e}; retrying"));
            backoff.wait().await;
        }
    }
    metrics.set_ready(|r| r.rules = true);

    let env = SubnetEnv {
        network: cfg.network,
        subnet: own.subnet,
        mtu: spec.mtu,
        ip_masq: opts.ip_masq,
    };
    env.write_atomically(&opts.subnet_file)
        .map_err(|e| format!("writing {}: {e}", opts.subnet_file.display()))?;
    metrics.set_ready(|r| r.subnet_env = true);
    log(format!("wrote {}; ready", opts.subnet_file.display()));

    let (ev_tx, mut ev_rx) = mpsc::channel::<(Instant, LeaseEvent)>(4096);
    let (own_tx, own_rx) = mpsc::channel::<OwnEvent>(64);
    let (mac_tx, mac_rx) = mpsc::channel::<VtepMac>(4);
    tokio::spawn(watch_leases(
        registry.clone(),
        own.subnet,
        attrs.clone(),
        ev_tx,
        own_tx,
        metrics.clone(),
        grace.max(Duration::from_secs(5)),
    ));
    let keeper = LeaseKeeper {
        registry: registry.clone(),
        own: own.clone(),
        attrs: attrs.clone(),
        cfg: cfg.clone(),
        ttl: opts.lease_ttl,
        margin: opts.renew_margin,
        metrics: metrics.clone(),
    };
    tokio::spawn(keeper.run(own_rx, mac_rx));
    let mut link_rx = watch_link(spec.name.clone())?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("installing SIGINT handler: {e}"))?;
    let mut mac_alarm = false;
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        tokio::select! {
            Some((at, ev)) = ev_rx.recv() => {
                // The full check is linear in the peers: per event only when the event can matter (a
                // lease with our MAC, or a clash being reported); every resync catches the rest.
                let check = match &ev {
                    LeaseEvent::Added(l) => mac_alarm || l.attrs.vtep_mac() == Some(identity.mac()),
                    LeaseEvent::Removed(_) | LeaseEvent::Garbled(_) => mac_alarm,
                    LeaseEvent::Snapshot(..) | LeaseEvent::Refill(_) => true,
                };
                reconciler.apply(ev, at).await;
                if check {
                    mac_alarm = guard_mac(&mut identity, &mut reconciler, &mac_tx, &metrics).await;
                }
            }
            Some(()) = link_rx.recv() => {
                while link_rx.try_recv().is_ok() {}
                reconciler.full().await;
            }
            _ = resync.tick() => {
                reconciler.full().await;
                mac_alarm = guard_mac(&mut identity, &mut reconciler, &mac_tx, &metrics).await;
                if let Some(r) = &rules {
                    match r.ensure().await {
                        Ok(true) => {
                            metrics.rules_repairs.fetch_add(1, Relaxed);
                            log("traffic rules were damaged: reinstalled");
                        }
                        Ok(false) => {}
                        Err(e) => {
                            metrics.set_ready(|r| r.rules = false);
                            log(format!("traffic rules: {e}"));
                            continue;
                        }
                    }
                    metrics.set_ready(|r| r.rules = true);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    log("signal received: exiting, leaving kernel state in place");
    Ok(())
}

/// Checks the peer table for VTEP MAC clashes; reports them (log on change, `/readyz`, metrics) and, when
/// this node is the one to step away, switches the device and the lease to a new MAC. Returns whether a
/// clash is still being reported.
async fn guard_mac(
    identity: &mut MacIdentity,
    reconciler: &mut Reconciler,
    mac_tx: &mpsc::Sender<VtepMac>,
    metrics: &Metrics,
) -> bool {
    let old = identity.mac();
    let v = identity.check(reconciler.peers(), Instant::now());
    let with_us = v.describe_with_us(old);
    let among = v.describe_among_peers();
    let before = metrics.readiness();
    if with_us != before.mac_collision {
        match &with_us {
            Some(w) => log(format!("ERROR: {w}")),
            None => log(format!("VTEP MAC collision resolved (our MAC is {old})")),
        }
    }
    if among != before.peer_mac_duplicates {
        if let Some(a) = &among {
            log(format!("warning: {a}"));
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
        log(format!(
            "changing our VTEP MAC from {old} to {new} (generation {}) to resolve the collision",
            identity.generation()
        ));
        metrics.vtep_mac_changes.fetch_add(1, Relaxed);
        reconciler.set_mac(new);
        reconciler.full().await;
        let _ = mac_tx.send(new).await;
        log(format!(
            "VTEP MAC collision resolved: our MAC is now {new}, lease re-published"
        ));
        metrics.vtep_mac_collisions.store(0, Relaxed);
        metrics.set_ready(|r| r.mac_collision = None);
        return !v.among_peers.is_empty();
    }
    !v.with_us.is_empty() || !v.among_peers.is_empty()
}

pub fn set_expiry(metrics: &Metrics, own: &OwnLease, ttl: Duration) {
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

/// Notifies when our device is deleted or changed (flannel.md §6.1: flannel recreates it but does not replay
/// peers; we trigger a full reconcile, which does).
fn watch_link(name: String) -> Result<mpsc::Receiver<()>, Fatal> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(|e| format!("opening netlink link monitor: {e}"))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let link = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                | NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => l,
                _ => continue,
            };
            let ours = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == name));
            if ours && tx.try_send(()).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
