//! Wires the parts together: subnet manager (etcd), VXLAN backend + reconciler, traffic rules, subnet.env,
//! health. Start-up order follows flannel (flannel.md §1): config, lease, device, rules, subnet.env; then the
//! lease keeper, the lease watcher and the link watcher feed the reconciler until SIGTERM, which leaves all
//! kernel state in place so a restart does not disturb traffic (flannel.md §11).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;

use crate::acquire::{acquire, AcquireError, OwnLease};
use crate::config::NetworkConfig;
use crate::flags::Options;
use crate::iface;
use crate::lease::{Lease, LeaseAttrs, VtepMac};
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, ReconcilerConfig};
use crate::registry::{interpret, LeaseEvent, Registry, RegistryError, WatchOutcome};
use crate::rules::TrafficRules;
use crate::subnet_env::{previous_subnet, SubnetEnv};
use crate::vxlan::{DeviceSpec, Vxlan};

/// Exponential backoff 100 ms -> 5 s, as flannel's watch reconnect (flannel.md §5).
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// A fatal start-up error (exit non-zero).
pub type Fatal = String;

fn log(msg: impl std::fmt::Display) {
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
    let mac = VtepMac::derive(&opts.node_name, cfg.backend.vni);
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
    tokio::spawn(watch_leases(
        registry.clone(),
        own.subnet,
        attrs.clone(),
        ev_tx,
        own_tx,
        metrics.clone(),
    ));
    tokio::spawn(keep_lease(
        registry.clone(),
        own.clone(),
        attrs.clone(),
        opts.lease_ttl,
        opts.renew_margin,
        own_rx,
        metrics.clone(),
    ));
    let mut link_rx = watch_link(spec.name.clone())?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("installing SIGINT handler: {e}"))?;
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        tokio::select! {
            Some((at, ev)) = ev_rx.recv() => {
                reconciler.apply(ev, at).await;
            }
            Some(()) = link_rx.recv() => {
                while link_rx.try_recv().is_ok() {}
                reconciler.full().await;
            }
            _ = resync.tick() => {
                reconciler.full().await;
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

fn set_expiry(metrics: &Metrics, own: &OwnLease, ttl: Duration) {
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

/// What the watch saw of our own key.
#[derive(Debug)]
enum OwnEvent {
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
async fn watch_leases(
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
async fn keep_lease(
    mut registry: Registry,
    mut own: OwnLease,
    attrs: LeaseAttrs,
    ttl: Duration,
    margin: Duration,
    mut rx: mpsc::Receiver<OwnEvent>,
    metrics: Arc<Metrics>,
) {
    let renew_after = if margin < ttl { ttl - margin } else { ttl / 2 };
    let retry = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let far = Duration::from_secs(365 * 86_400);
    let mut recreate = false;
    let mut lost = false;
    let mut next = tokio::time::Instant::now() + if own.lease_id == 0 { far } else { renew_after };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
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
