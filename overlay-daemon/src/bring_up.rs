//! Each backend's start-up: the underlay addresses and devices of every family the network runs planned, the
//! lease acquired with their attributes, then one lane per family handed to [`crate::serve`].

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

use crate::backend::host_gw::{HostGwBackend, HostGwConfig};
use crate::backend::vxlan::mac_guard::MacGuard;
use crate::backend::vxlan::vtep_mac::MacIdentity;
use crate::backend::vxlan::{DeviceSpec, Vxlan, VxlanBackend, VxlanConfig};
use crate::config::Pool;
use crate::daemon::{acquire, lease_log, Fatal, NoGuard, Start};
use crate::family::Family;
use crate::serve::{serve, LaneSpec};
use crate::subnet::{Lease, LeaseAttrs, SubnetManager};

pub(crate) async fn run_host_gw(mut s: Start) -> Result<(), Fatal> {
    let u = s.underlay.clone();
    // Peers send to our public address as the next hop: it must be an address of the underlay itself (behind
    // NAT it would not be reachable on the segment).
    if let Some(ip) = u
        .public_ip
        .filter(|ip| !u.networks.iter().any(|n| n.addr() == *ip))
    {
        return Err(Fatal::Underlay(format!(
            "host-gw: public IP {ip} is not an address of {}; host-gw needs the nodes' own addresses on one L2 \
             segment",
            u.name
        )));
    }
    if let Some(ip) = u
        .public_ipv6
        .filter(|ip| !u.networks_v6.iter().any(|n| n.addr() == *ip))
    {
        return Err(Fatal::Underlay(format!(
            "host-gw: public IPv6 {ip} is not an address of {}; host-gw needs the nodes' own addresses on one \
             L2 segment",
            u.name
        )));
    }
    let attrs = LeaseAttrs::host_gw(u.public_ip, u.public_ipv6, &s.node_name);
    let own = acquire(&mut s, &attrs).await;
    tracing::info!("acquired subnet {} (host-gw){}", own.key, lease_log(&own));
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
        return Err(Fatal::Underlay(format!(
            "MTU {outer_mtu} of {} leaves no room for VXLAN's {overhead} bytes on {name}; set Backend.MTU",
            s.underlay.name
        )));
    }
    let mut identity = MacIdentity::choose(&s.node_name, public, cfg.backend.vni, leases, s.grace);
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
        tracing::warn!("{e}: deriving the VTEP MAC");
        None
    });
    let kept = existing.is_some_and(|(_, m)| identity.keep_existing(m, leases));
    let mac = identity.mac();
    if kept {
        tracing::info!("keeping the VTEP MAC {mac} of the existing {}", probe.name);
    } else if let Some((index, m)) = existing {
        tracing::warn!(
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
        tracing::warn!(
            "VTEP MAC of generation 0 is in another node's lease: using {mac} for {} (generation {})",
            probe.name,
            identity.generation()
        );
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

pub(crate) async fn run_vxlan(mut s: Start) -> Result<(), Fatal> {
    let (cfg, underlay) = (s.cfg.clone(), s.underlay.clone());
    // The MACs are chosen against the leases already in etcd, so they are not ones another node uses.
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
        &s.node_name,
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
    tracing::info!(
        "acquired subnet {} (VTEP MAC {}){}",
        own.key,
        macs.join(", "),
        lease_log(&own)
    );
    let missing =
        |family: &str| Fatal::Config(format!("the lease {} has no {family} subnet", own.key));
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
        (None, None) => Err(Fatal::Underlay(
            "the network runs no family this node has an underlay address of".into(),
        )),
    }
}
