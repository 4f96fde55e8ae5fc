//! The host-gw backend: no device and no encapsulation; per peer a main-table route `<subnet> via <peer's
//! public IP> dev <underlay>`. That only works when every node shares one L2 segment: a peer whose public IP is
//! not in a network connected to our underlay cannot be a next hop, so it is reported (log, `/readyz`) and
//! left out rather than given a route the kernel would refuse or send the wrong way.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};
use tokio::task::yield_now;
use twill_kernel::{Family, Handle, Route, RouteFilter, RouteProtocol, TABLE_MAIN};

use super::{Backend, Repairs};
use crate::metrics::Metrics;
use crate::subnet::lease::Lease;

/// A remote node as host-gw reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub public_ip: Ipv4Addr,
    /// The public IP is in a network connected to our underlay: it can be the next hop.
    pub on_link: bool,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.public_ip)?;
        if !self.on_link {
            write!(f, " (not on our L2 segment)")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum HostGwError {
    Netlink(twill_kernel::Error),
    OffLink(String),
}

impl std::fmt::Display for HostGwError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostGwError::Netlink(e) => write!(f, "{e}"),
            HostGwError::OffLink(why) => write!(f, "ERROR: {why}"),
        }
    }
}

impl From<twill_kernel::Error> for HostGwError {
    fn from(e: twill_kernel::Error) -> Self {
        HostGwError::Netlink(e)
    }
}

/// Our routes as the kernel has them: destination -> gateway.
pub type RouteView = BTreeMap<Ipv4Net, Ipv4Addr>;

pub struct HostGwConfig {
    pub underlay: String,
    pub underlay_index: u32,
    /// The underlay's connected networks: a peer must be in one of them.
    pub underlay_networks: Vec<Ipv4Net>,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub own: Ipv4Net,
}

pub struct HostGwBackend {
    handle: Handle,
    c: HostGwConfig,
    metrics: Arc<Metrics>,
    /// Peers not on our segment, by subnet: reported until they leave or move onto it.
    off_link: Mutex<BTreeMap<Ipv4Net, Ipv4Addr>>,
}

impl HostGwBackend {
    pub fn new(handle: Handle, c: HostGwConfig, metrics: Arc<Metrics>) -> Self {
        HostGwBackend {
            handle,
            c,
            metrics,
            off_link: Mutex::new(BTreeMap::new()),
        }
    }

    fn off_link_error(&self, subnet: Ipv4Net, ip: Ipv4Addr) -> HostGwError {
        let nets: Vec<String> = self
            .c
            .underlay_networks
            .iter()
            .map(|n| n.trunc().to_string())
            .collect();
        HostGwError::OffLink(format!(
            "host-gw cannot reach peer {subnet} at {ip}: {ip} is not on the L2 segment of {} ({}); host-gw \
             needs all nodes on one segment, so {subnet} is not routed",
            self.c.underlay,
            nets.join(", ")
        ))
    }

    /// Records which peers are off our segment and publishes them in `/readyz`. Returns the ones that were not
    /// known before (to be logged once).
    fn set_off_link(&self, now: BTreeMap<Ipv4Net, Ipv4Addr>) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let Ok(mut known) = self.off_link.lock() else {
            return Vec::new();
        };
        let new = now
            .iter()
            .filter(|(s, ip)| known.get(s) != Some(ip))
            .map(|(s, ip)| (*s, *ip))
            .collect();
        *known = now;
        let problem = (!known.is_empty()).then(|| {
            let list: Vec<String> = known.iter().map(|(s, ip)| format!("{s} at {ip}")).collect();
            format!(
                "host-gw peers not on the L2 segment of {}, not routed: {}",
                self.c.underlay,
                list.join(", ")
            )
        });
        self.metrics.set_ready(|r| r.unroutable_peers = problem);
        new
    }

    fn update_off_link(&self, subnet: Ipv4Net, peer: Option<&Peer>) -> bool {
        let mut now = self.off_link.lock().map(|k| k.clone()).unwrap_or_default();
        match peer {
            Some(p) if !p.on_link => now.insert(subnet, p.public_ip),
            _ => now.remove(&subnet),
        };
        !self.set_off_link(now).is_empty()
    }

    fn add_route(&self, subnet: Ipv4Net, gw: Ipv4Addr) -> Result<(), HostGwError> {
        // Protocol `static`, as these routes have always been programmed.
        let r = Route::new(subnet.into())
            .via(gw.into())
            .dev(self.c.underlay_index)
            .protocol(RouteProtocol::Static);
        Ok(self.handle.replace_route(&r)?)
    }

    fn del_route(&self, subnet: Ipv4Net) -> Result<(), HostGwError> {
        // Unspecified protocol, scope and type are wildcards for the kernel: a hand-made route goes too.
        let r = Route::new(subnet.into()).dev(self.c.underlay_index);
        match self.handle.delete_route(&r) {
            Err(e) if e.is_not_found() => Ok(()),
            r => Ok(r?),
        }
    }
}

impl Backend for HostGwBackend {
    type Peer = Peer;
    type View = RouteView;
    type Error = HostGwError;

    fn device_name(&self) -> &str {
        &self.c.underlay
    }

    fn peer_of(&self, lease: &Lease) -> Option<Peer> {
        let ip = lease.attrs.public_ip;
        Some(Peer {
            public_ip: ip,
            on_link: self.c.underlay_networks.iter().any(|n| n.contains(&ip)),
        })
    }

    async fn ensure_device(&mut self) -> Result<(u32, bool), HostGwError> {
        // No device of our own: routes go out of the underlay, which we do not manage.
        Ok((self.c.underlay_index, false))
    }

    async fn add_peer(&self, _dev: u32, subnet: Ipv4Net, peer: &Peer) -> Result<(), HostGwError> {
        self.update_off_link(subnet, Some(peer));
        if !peer.on_link {
            // A route left from when the peer was reachable would now send its traffic the wrong way.
            self.del_route(subnet)?;
            return Err(self.off_link_error(subnet, peer.public_ip));
        }
        self.add_route(subnet, peer.public_ip)
    }

    async fn update_peer(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        _old: &Peer,
        new: &Peer,
    ) -> Vec<HostGwError> {
        // One route per subnet, replaced in place: no gap and nothing of the old peer left over.
        self.add_peer(dev, subnet, new)
            .await
            .err()
            .into_iter()
            .collect()
    }

    async fn remove_peer(
        &self,
        _dev: u32,
        subnet: Ipv4Net,
        _peer: &Peer,
    ) -> Result<(), HostGwError> {
        self.update_off_link(subnet, None);
        self.del_route(subnet)
    }

    /// Main-table routes out of the underlay, with a gateway, to a subnet of our network: the routes host-gw
    /// owns (flanneld's too, so a node switched between the two keeps or cleans them).
    async fn view(&self, dev: u32) -> Result<RouteView, HostGwError> {
        let filter = RouteFilter {
            family: Some(Family::V4),
            table: Some(TABLE_MAIN),
            oif: Some(dev),
        };
        let mut v = RouteView::new();
        for r in self.handle.routes(filter)? {
            let (IpNet::V4(net), Some(IpAddr::V4(gw))) = (r.dst, r.gateway) else {
                continue;
            };
            if net.prefix_len() == self.c.subnet_len
                && self.c.network.contains(&net)
                && net != self.c.own
            {
                v.insert(net, gw);
            }
        }
        Ok(v)
    }

    async fn repair(
        &self,
        _dev: u32,
        peers: &BTreeMap<Ipv4Net, Peer>,
        view: &RouteView,
    ) -> Repairs<HostGwError> {
        let plan = plan(peers, view);
        let mut errors: Vec<HostGwError> = self
            .set_off_link(plan.off_link)
            .into_iter()
            .map(|(s, ip)| self.off_link_error(s, ip))
            .collect();
        // Synchronous kernel calls: yield between them so the daemon's other tasks run during a long pass.
        for s in &plan.stale {
            errors.extend(self.del_route(*s).err());
            yield_now().await;
        }
        for (s, gw) in &plan.missing {
            errors.extend(self.add_route(*s, *gw).err());
            yield_now().await;
        }
        Repairs {
            count: (plan.stale.len() + plan.missing.len()) as u64,
            errors,
        }
    }
}

/// What a full pass does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Our routes that no peer wants (gone, or now off our segment).
    pub stale: Vec<Ipv4Net>,
    /// Routes to add or to correct in place (replace): absent, or via the wrong gateway.
    pub missing: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Peers that cannot be routed.
    pub off_link: BTreeMap<Ipv4Net, Ipv4Addr>,
}

pub fn plan(peers: &BTreeMap<Ipv4Net, Peer>, view: &RouteView) -> Plan {
    let mut p = Plan::default();
    for (s, peer) in peers {
        if !peer.on_link {
            p.off_link.insert(*s, peer.public_ip);
        } else if view.get(s) != Some(&peer.public_ip) {
            p.missing.push((*s, peer.public_ip));
        }
    }
    p.stale = view
        .keys()
        .filter(|s| !peers.get(s).is_some_and(|p| p.on_link))
        .copied()
        .collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_full_pass_adds_missing_fixes_wrong_and_drops_stale_and_off_segment_routes() {
        let peers: BTreeMap<Ipv4Net, Peer> = [
            ("10.244.1.0/24", "10.0.0.1", true),
            ("10.244.2.0/24", "10.0.0.2", true),
            ("10.244.3.0/24", "10.0.0.3", true),
            ("10.244.4.0/24", "10.9.0.4", false),
        ]
        .into_iter()
        .map(|(s, i, on_link)| {
            (
                net(s),
                Peer {
                    public_ip: ip(i),
                    on_link,
                },
            )
        })
        .collect();
        let view: RouteView = [
            ("10.244.1.0/24", "10.0.0.1"),  // right
            ("10.244.2.0/24", "10.0.0.99"), // wrong gateway (hand-edited, or the peer moved)
            ("10.244.4.0/24", "10.9.0.4"),  // the peer left our segment
            ("10.244.9.0/24", "10.0.0.9"),  // nobody holds it
        ]
        .into_iter()
        .map(|(s, g)| (net(s), ip(g)))
        .collect();
        let p = plan(&peers, &view);
        assert_eq!(p.stale, vec![net("10.244.4.0/24"), net("10.244.9.0/24")]);
        assert_eq!(
            p.missing,
            vec![
                (net("10.244.2.0/24"), ip("10.0.0.2")),
                (net("10.244.3.0/24"), ip("10.0.0.3"))
            ]
        );
        assert_eq!(
            p.off_link.into_iter().collect::<Vec<_>>(),
            vec![(net("10.244.4.0/24"), ip("10.9.0.4"))]
        );
        let done: RouteView = [
            ("10.244.1.0/24", "10.0.0.1"),
            ("10.244.2.0/24", "10.0.0.2"),
            ("10.244.3.0/24", "10.0.0.3"),
        ]
        .into_iter()
        .map(|(s, g)| (net(s), ip(g)))
        .collect();
        let p = plan(&peers, &done);
        assert!(p.stale.is_empty() && p.missing.is_empty(), "{p:?}");
    }
}
