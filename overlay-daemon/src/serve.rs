//! The steady state, whatever the backend: one lane per family, blackhole routes, traffic rules and subnet.env,
//! then lease and link events until SIGTERM.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ipnet::IpNet;
use twill_files::subnet_env::{self, SubnetEnv};

use crate::backend::Backend;
use crate::blackhole::Blackhole;
use crate::config::{NetworkConfig, Pool};
use crate::daemon::{Fatal, Guard, Start};
use crate::family::Family;
use crate::flags::Options;
use crate::lane::{self, Lane};
use crate::metrics::{Metrics, Slot};
use crate::reconcile::Reconciler;
use crate::rules::{fully_random, RuleOptions, TrafficRules};
use crate::subnet::lease_check::Expect;
use crate::subnet::{LeaseAttrs, OwnLease, SubnetManager};
use twill_firewall::nft::IpFamily;

/// One family's backend, ready to serve.
pub(crate) struct LaneSpec<B: Backend> {
    pub backend: B,
    /// Our subnet of the family.
    pub own: B::Net,
    pub pool: Pool<B::Net>,
    pub own_public_ip: Option<<B::Net as Family>::Addr>,
    /// The device whose changes ask for a full pass.
    pub link: String,
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
pub(crate) async fn serve<A: Backend, B: Backend>(
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
            tracing::warn!("blackhole route for {}: {e}", own.key);
        }
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
        networks_v4: cfg.v4_network().into_iter().collect(),
        networks_v6: cfg.v6_network().into_iter().collect(),
        subnet_v4: own.key.v4.map(subnet_env::gateway_v4),
        subnet_v6: own.key.v6.map(subnet_env::gateway_v6),
        mtu,
        ipmasq: opts.ip_masq,
    };
    env.write(&opts.subnet_file).map_err(Fatal::SubnetFile)?;
    metrics.set_ready(|r| r.subnet_env = true);
    tracing::info!("wrote {}; ready", opts.subnet_file.display());

    let membership = subnets.start(&own, &attrs, &cfg);
    let (mut ev_rx, publish) = (membership.events, membership.publish);
    if let Some(l) = &mut first {
        l.watch(opts.resync_full_every)?;
    }
    if let Some(l) = &mut second {
        l.watch(opts.resync_full_every)?;
    }

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
                        tracing::warn!("blackhole route for {}: {e}", own.key);
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
            let mut options = options;
            // As flanneld: without kernel (nftables) or iptables support, plain masquerade.
            if options.masquerade && options.fully_random {
                let family = match network {
                    IpNet::V4(_) => IpFamily::V4,
                    IpNet::V6(_) => IpFamily::V6,
                };
                options.fully_random = fully_random::supported(opts.rules_backend, family);
            }
            TrafficRules::new(opts.rules_backend, network, subnet, options).map_err(Fatal::Rules)
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
