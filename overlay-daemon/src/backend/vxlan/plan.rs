//! The VXLAN backend's full pass: the diff between the desired peers and what the kernel has (pure, so it is
//! unit-tested without a kernel).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::netlink::{KernelView, Peer};
use crate::subnet::lease::VtepMac;

/// What a full reconciliation has to change: kernel entries nobody wants, and peers not fully programmed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub stale_neighbours: Vec<IpAddr>,
    pub stale_fdb: Vec<(VtepMac, Option<IpAddr>)>,
    pub stale_device_routes: Vec<IpNet>,
    pub stale_direct_routes: Vec<IpNet>,
    pub missing_peers: Vec<Ipv4Net>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.stale_neighbours.len()
            + self.stale_fdb.len()
            + self.stale_device_routes.len()
            + self.stale_direct_routes.len()
            + self.missing_peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Diffs the desired peer table against the kernel's view (pure, so it is unit-tested without a kernel).
pub fn plan(
    peers: &BTreeMap<Ipv4Net, Peer>,
    view: &KernelView,
    own: Ipv4Net,
    subnet_len: u8,
    direct_routing: bool,
) -> Plan {
    let mut p = Plan::default();
    // Indexed once, so the diff is linear in peers + kernel entries (a full pass at 10,000 peers must not
    // compare every entry with every peer).
    let mut want_neigh: HashMap<IpAddr, VtepMac> = HashMap::new();
    let mut want_fdb: HashSet<(VtepMac, IpAddr)> = HashSet::new();
    for (s, peer) in peers.iter().filter(|(_, peer)| !peer.direct) {
        want_neigh.entry(s.network().into()).or_insert(peer.mac);
        want_fdb.insert((peer.mac, peer.public_ip.into()));
    }
    let have_fdb: HashSet<&(VtepMac, Option<IpAddr>)> = view.fdb.iter().collect();
    for (ip, mac) in &view.neighbours {
        let want = want_neigh.get(ip).copied();
        if want.is_none() || want != *mac {
            p.stale_neighbours.push(*ip);
        }
    }
    for (mac, dst) in &view.fdb {
        // FDB entries are keyed by MAC: a peer whose MAC changed leaves its old entry here (docs/architecture.md,
        // "VXLAN programming").
        if !dst.is_some_and(|d| want_fdb.contains(&(*mac, d))) {
            p.stale_fdb.push((*mac, *dst));
        }
    }
    for (net, (gw, onlink)) in &view.device_routes {
        let wanted = v4(net).is_some_and(|n| peers.get(&n).is_some_and(|peer| !peer.direct))
            && *gw == Some(net.network())
            && *onlink;
        if !wanted {
            p.stale_device_routes.push(*net);
        }
    }
    if direct_routing {
        // Only routes shaped like ours (a node subnet via a gateway) are candidates: other gateway routes into
        // the pod network are someone else's business.
        for (net, gw) in &view.direct_routes {
            if net.prefix_len() != subnet_len || *net == IpNet::V4(own) {
                continue;
            }
            let wanted = v4(net).and_then(|n| peers.get(&n));
            if !wanted.is_some_and(|peer| peer.direct && Some(IpAddr::V4(peer.public_ip)) == *gw) {
                p.stale_direct_routes.push(*net);
            }
        }
    }
    for (subnet, peer) in peers {
        let (net, gw, public) = (
            IpNet::V4(*subnet),
            IpAddr::V4(subnet.network()),
            IpAddr::V4(peer.public_ip),
        );
        let present = if peer.direct {
            view.direct_routes.get(&net) == Some(&Some(public))
        } else {
            view.neighbours.get(&gw) == Some(&Some(peer.mac))
                && have_fdb.contains(&(peer.mac, Some(public)))
                && view.device_routes.get(&net) == Some(&(Some(gw), true))
        };
        if !present {
            p.missing_peers.push(*subnet);
        }
    }
    p
}

/// The IPv4 network a kernel destination is, to look it up among the peers.
fn v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn knet(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn kip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn mac(last: u8) -> VtepMac {
        VtepMac([2, 0, 0, 0, 0, last])
    }
    fn peer(public: &str, m: u8) -> Peer {
        Peer {
            public_ip: ip(public),
            mac: mac(m),
            direct: false,
        }
    }
    fn programmed(peers: &BTreeMap<Ipv4Net, Peer>) -> KernelView {
        let mut v = KernelView::default();
        for (s, p) in peers {
            v.neighbours.insert(s.network().into(), Some(p.mac));
            v.fdb.push((p.mac, Some(p.public_ip.into())));
            v.device_routes
                .insert((*s).into(), (Some(s.network().into()), true));
        }
        v
    }
    const OWN: &str = "10.244.1.0/24";

    #[test]
    fn programmed_peers_need_nothing() {
        let peers = BTreeMap::from([
            (net("10.244.2.0/24"), peer("10.0.0.2", 2)),
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
        ]);
        assert!(plan(&peers, &programmed(&peers), net(OWN), 24, false).is_empty());
    }

    #[test]
    fn entries_of_gone_peers_are_purged_and_missing_peers_added() {
        let before = BTreeMap::from([
            (net("10.244.2.0/24"), peer("10.0.0.2", 2)),
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
        ]);
        let view = programmed(&before);
        let now = BTreeMap::from([
            (net("10.244.3.0/24"), peer("10.0.0.3", 3)),
            (net("10.244.4.0/24"), peer("10.0.0.4", 4)),
        ]);
        let p = plan(&now, &view, net(OWN), 24, false);
        assert_eq!(p.stale_neighbours, vec![kip("10.244.2.0")]);
        assert_eq!(p.stale_fdb, vec![(mac(2), Some(kip("10.0.0.2")))]);
        assert_eq!(p.stale_device_routes, vec![knet("10.244.2.0/24")]);
        assert_eq!(p.missing_peers, vec![net("10.244.4.0/24")]);
    }

    #[test]
    fn changed_mac_replaces_neighbour_and_drops_old_fdb_entry() {
        let old = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 2))]);
        let view = programmed(&old);
        let new = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 9))]);
        let p = plan(&new, &view, net(OWN), 24, false);
        assert_eq!(p.stale_neighbours, vec![kip("10.244.2.0")]);
        assert_eq!(p.stale_fdb, vec![(mac(2), Some(kip("10.0.0.2")))]);
        assert_eq!(p.missing_peers, vec![net("10.244.2.0/24")]);
    }

    #[test]
    fn bogus_route_and_fdb_entry_on_the_device_are_removed() {
        let peers = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", 2))]);
        let mut view = programmed(&peers);
        view.device_routes
            .insert(knet("10.99.0.0/24"), (None, false));
        view.fdb.push((VtepMac([0; 6]), Some(kip("10.0.0.77"))));
        let p = plan(&peers, &view, net(OWN), 24, false);
        assert_eq!(p.stale_device_routes, vec![knet("10.99.0.0/24")]);
        assert_eq!(p.stale_fdb, vec![(VtepMac([0; 6]), Some(kip("10.0.0.77")))]);
        assert!(p.missing_peers.is_empty());
    }

    #[test]
    fn direct_routes_are_managed_only_with_direct_routing() {
        let mut peers = BTreeMap::new();
        peers.insert(
            net("10.244.2.0/24"),
            Peer {
                public_ip: ip("10.0.0.2"),
                mac: mac(2),
                direct: true,
            },
        );
        let mut view = KernelView::default();
        view.direct_routes
            .insert(knet("10.244.2.0/24"), Some(kip("10.0.0.2")));
        view.direct_routes
            .insert(knet("10.244.7.0/24"), Some(kip("10.0.0.7")));
        view.direct_routes
            .insert(knet("10.244.8.0/25"), Some(kip("10.0.0.8")));
        let p = plan(&peers, &view, net(OWN), 24, true);
        assert_eq!(p.stale_direct_routes, vec![knet("10.244.7.0/24")]);
        assert!(p.missing_peers.is_empty());
        let p = plan(&BTreeMap::new(), &view, net(OWN), 24, false);
        assert!(p.stale_direct_routes.is_empty());
    }
}
