//! This node's VTEP MAC among the others'. Two VTEPs with one MAC break the overlay silently: FDB entries are
//! keyed by MAC, so a peer's entry for "our" MAC (or two peers' entries for one MAC) sends frames to the wrong
//! node. The MAC is derived ([`VtepMac::derive`]) and chosen at start-up so that no other node's lease
//! already carries it, unless the VXLAN device already exists (flanneld's, or an earlier run's): its MAC is
//! kept when no other node's lease carries it ([`MacIdentity::keep_existing`]); afterwards every change of the peer table is checked, a collision is reported, and
//! exactly one side steps to the next generation of its derived MAC:
//!
//! - of two nodes with one MAC, the one with the higher (public IP, subnet) changes at once; both sides see
//!   the same pair, so both agree on who that is and the MACs never flip-flop;
//! - the other one changes only if the collision outlives a grace period, i.e. when the other side is not a
//!   twilld (flanneld keeps its MAC) or not running; it then steps away too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::netlink::Peer;
use crate::family::Family;
use crate::subnet::lease::{Lease, VtepMac};

/// How many generations are tried before giving up on finding a free MAC (2^-46 per try to hit one in use).
const MAX_GENERATION: u32 = 64;

/// The VTEP MAC of one device: `flannel.<VNI>` (IPv4 underlay) or `flannel-v6.<VNI>` (IPv6 underlay), told
/// apart by the family of `public_ip`; each is compared with the other nodes' MACs of the same family.
pub struct MacIdentity {
    node_name: String,
    public_ip: IpAddr,
    vni: u32,
    generation: u32,
    mac: VtepMac,
    own_subnet: Option<IpNet>,
    grace: Duration,
    conflict_since: Option<Instant>,
    /// The MAC is the existing device's, not a derived one: a collision steps to the first free generation.
    kept: bool,
}

/// What one check of the peer table found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Peer leases carrying our MAC: (subnet, public IP).
    pub with_us: Vec<(IpNet, IpAddr)>,
    /// MACs carried by more than one peer lease.
    pub among_peers: Vec<(VtepMac, Vec<IpNet>)>,
    /// The MAC this node must switch to now (device and lease).
    pub change_to: Option<VtepMac>,
}

impl MacIdentity {
    /// The first generation whose MAC no lease of another node carries (leases with our public IP are ours,
    /// from an earlier run).
    pub fn choose(
        node_name: &str,
        public_ip: IpAddr,
        vni: u32,
        leases: &[Lease],
        grace: Duration,
    ) -> MacIdentity {
        let used = used_by_others(leases, public_ip);
        let mut me = MacIdentity {
            node_name: node_name.to_string(),
            public_ip,
            vni,
            generation: 0,
            mac: VtepMac::derive(node_name, public_ip, vni, 0),
            own_subnet: None,
            grace,
            conflict_since: None,
            kept: false,
        };
        me.step_away_from(&used, 0);
        me
    }

    /// Keeps `mac`, the MAC of the compatible device found at start-up, unless another node's lease carries
    /// it (or it is not a unicast MAC). Taking over from flanneld thus changes nothing peers know: flanneld
    /// peers never drop the FDB entry of a MAC that left a lease, so a new MAC would leave a stale one.
    /// Returns whether `mac` is kept.
    pub fn keep_existing(&mut self, mac: VtepMac, leases: &[Lease]) -> bool {
        if !mac.is_valid_unicast() || used_by_others(leases, self.public_ip).contains(&mac) {
            return false;
        }
        self.mac = mac;
        self.kept = true;
        true
    }

    pub fn mac(&self) -> VtepMac {
        self.mac
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn set_own_subnet(&mut self, subnet: IpNet) {
        self.own_subnet = Some(subnet);
    }

    /// Moves to the first generation >= `from` whose MAC is not in `used`.
    fn step_away_from(&mut self, used: &BTreeSet<VtepMac>, from: u32) {
        for g in from..from + MAX_GENERATION {
            let mac = VtepMac::derive(&self.node_name, self.public_ip, self.vni, g);
            if !used.contains(&mac) {
                self.generation = g;
                self.mac = mac;
                return;
            }
        }
    }

    /// Whether we are the side that changes at once when `peer` carries our MAC.
    fn yields_to(&self, subnet: IpNet, peer_ip: IpAddr) -> bool {
        let own = self.own_subnet.unwrap_or(subnet);
        (self.public_ip, own) > (peer_ip, subnet)
    }

    pub fn check<N: Family>(&mut self, peers: &BTreeMap<N, Peer>, now: Instant) -> Verdict {
        let mut v = Verdict::default();
        let mut by_mac: BTreeMap<VtepMac, Vec<IpNet>> = BTreeMap::new();
        for (subnet, p) in peers {
            if p.mac == self.mac {
                v.with_us.push(((*subnet).into(), p.public_ip));
            } else {
                by_mac.entry(p.mac).or_default().push((*subnet).into());
            }
        }
        v.among_peers = by_mac.into_iter().filter(|(_, s)| s.len() > 1).collect();
        if v.with_us.is_empty() {
            self.conflict_since = None;
            return v;
        }
        let since = *self.conflict_since.get_or_insert(now);
        let yield_now = v.with_us.iter().any(|(s, ip)| self.yields_to(*s, *ip));
        if yield_now || now.duration_since(since) >= self.grace {
            let used: BTreeSet<VtepMac> = peers.values().map(|p| p.mac).collect();
            let from = if self.kept { 0 } else { self.generation + 1 };
            self.kept = false;
            self.step_away_from(&used, from);
            if !used.contains(&self.mac) {
                self.conflict_since = None;
                v.change_to = Some(self.mac);
            }
        }
        v
    }
}

/// MACs of `public_ip`'s family in leases of other nodes (leases with our public IP are ours, from an earlier
/// run or flanneld).
fn used_by_others(leases: &[Lease], public_ip: IpAddr) -> BTreeSet<VtepMac> {
    leases
        .iter()
        .filter_map(|l| match public_ip {
            IpAddr::V4(ip) => (l.attrs.public_ip != ip).then(|| l.attrs.vtep_mac()),
            IpAddr::V6(ip) => (l.attrs.public_ipv6 != Some(ip)).then(|| l.attrs.vtep_mac_v6()),
        })
        .flatten()
        .collect()
}

impl Verdict {
    /// For the log and `/readyz`: our MAC in other leases.
    pub fn describe_with_us(&self, mac: VtepMac) -> Option<String> {
        (!self.with_us.is_empty()).then(|| {
            let who: Vec<String> = self
                .with_us
                .iter()
                .map(|(s, ip)| format!("{s} at {ip}"))
                .collect();
            format!(
                "VTEP MAC collision: our MAC {mac} is also in the lease of {}",
                who.join(", ")
            )
        })
    }

    /// For the log and `/readyz`: peers sharing a MAC with each other.
    pub fn describe_among_peers(&self) -> Option<String> {
        (!self.among_peers.is_empty()).then(|| {
            let dups: Vec<String> = self
                .among_peers
                .iter()
                .map(|(m, s)| {
                    let s: Vec<String> = s.iter().map(|n| n.to_string()).collect();
                    format!("{m} in {}", s.join(" and "))
                })
                .collect();
            format!(
                "peers share a VTEP MAC (their traffic goes to one of them): {}",
                dups.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::LeaseAttrs;

    use ipnet::Ipv4Net;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn peer(public: &str, mac: VtepMac) -> Peer {
        Peer {
            public_ip: ip(public),
            mac,
            direct: false,
        }
    }
    const G: Duration = Duration::from_secs(3);

    #[test]
    fn one_node_name_on_several_addresses_gives_distinct_macs() {
        let a = MacIdentity::choose("node", ip("10.0.0.1"), 1, &[], G);
        let b = MacIdentity::choose("node", ip("10.0.0.2"), 1, &[], G);
        assert_ne!(a.mac(), b.mac());
        assert_eq!(a.generation(), 0);
    }

    #[test]
    fn start_up_skips_a_mac_another_lease_carries_but_not_our_own_old_lease() {
        let mine = VtepMac::derive("n", ip("10.0.0.1"), 1, 0);
        let lease = |public: &str| Lease {
            key: crate::subnet::SubnetKey::v4(net("10.244.9.0/24")),
            attrs: LeaseAttrs::vxlan(Some((ip4(public), mine)), None, 1, "x"),
            lease_id: 1,
        };
        let own_old = MacIdentity::choose("n", ip("10.0.0.1"), 1, &[lease("10.0.0.1")], G);
        assert_eq!(own_old.mac(), mine);
        let other = MacIdentity::choose("n", ip("10.0.0.1"), 1, &[lease("10.0.0.9")], G);
        assert_ne!(other.mac(), mine);
        assert_eq!(other.generation(), 1);
    }

    #[test]
    fn an_existing_device_mac_is_kept_unless_another_node_leases_it() {
        let existing = VtepMac([0x5a, 1, 2, 3, 4, 5]);
        let lease = |public: &str| Lease {
            key: crate::subnet::SubnetKey::v4(net("10.244.9.0/24")),
            attrs: LeaseAttrs::vxlan(Some((ip4(public), existing)), None, 1, "x"),
            lease_id: 1,
        };
        // Its own lease (flanneld's, same public IP) carries it: kept.
        let leases = [lease("10.0.0.1")];
        let mut me = MacIdentity::choose("n", ip("10.0.0.1"), 1, &leases, G);
        assert!(me.keep_existing(existing, &leases));
        assert_eq!(me.mac(), existing);
        // Another node's lease carries it: the derived MAC.
        let leases = [lease("10.0.0.9")];
        let mut me = MacIdentity::choose("n", ip("10.0.0.1"), 1, &leases, G);
        assert!(!me.keep_existing(existing, &leases));
        assert_eq!(me.mac(), VtepMac::derive("n", ip("10.0.0.1"), 1, 0));
        // Not a unicast MAC: the derived MAC.
        assert!(!me.keep_existing(VtepMac([1, 0, 0, 0, 0, 1]), &[]));
        assert!(!me.keep_existing(VtepMac([0; 6]), &[]));
    }

    #[test]
    fn a_kept_mac_in_collision_steps_to_the_first_free_derived_mac() {
        let existing = VtepMac([0x5a, 1, 2, 3, 4, 5]);
        let mut me = MacIdentity::choose("n", ip("10.0.0.2"), 1, &[], G);
        assert!(me.keep_existing(existing, &[]));
        me.set_own_subnet(net("10.244.2.0/24").into());
        let peers = BTreeMap::from([(net("10.244.1.0/24"), peer("10.0.0.1", existing))]);
        let v = me.check(&peers, Instant::now());
        assert_eq!(
            v.change_to,
            Some(VtepMac::derive("n", ip("10.0.0.2"), 1, 0))
        );
        assert_eq!(me.generation(), 0);
    }

    #[test]
    fn higher_address_changes_at_once_lower_only_after_the_grace_period() {
        let t0 = Instant::now();
        let mut high = MacIdentity::choose("n", ip("10.0.0.2"), 1, &[], G);
        high.set_own_subnet(net("10.244.2.0/24").into());
        let shared = high.mac();
        let mut low = MacIdentity::choose("n", ip("10.0.0.2"), 1, &[], G);
        low.public_ip = ip("10.0.0.1");
        low.set_own_subnet(net("10.244.1.0/24").into());

        let seen_by_high = BTreeMap::from([(net("10.244.1.0/24"), peer("10.0.0.1", shared))]);
        let v = high.check(&seen_by_high, t0);
        assert_eq!(
            v.with_us,
            vec![(net("10.244.1.0/24").into(), ip("10.0.0.1"))]
        );
        let new = v.change_to.expect("the higher address changes at once");
        assert_ne!(new, shared);

        let seen_by_low = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", shared))]);
        assert_eq!(low.check(&seen_by_low, t0).change_to, None);
        assert_eq!(low.check(&seen_by_low, t0 + G / 2).change_to, None);
        // The other side changed: the collision is over, nothing to do.
        let resolved = BTreeMap::from([(net("10.244.2.0/24"), peer("10.0.0.2", new))]);
        let v = low.check(&resolved, t0 + G);
        assert!(v.with_us.is_empty() && v.change_to.is_none());
        // A peer that never changes (flanneld): after the grace period we step away.
        assert_eq!(low.check(&seen_by_low, t0 + G * 2).change_to, None);
        let v = low.check(&seen_by_low, t0 + G * 3);
        assert!(v.change_to.is_some_and(|m| m != shared));
    }

    #[test]
    fn peers_sharing_a_mac_are_reported() {
        let mut me = MacIdentity::choose("n", ip("10.0.0.1"), 1, &[], G);
        let m = VtepMac([2, 0, 0, 0, 0, 7]);
        let peers = BTreeMap::from([
            (net("10.244.2.0/24"), peer("10.0.0.2", m)),
            (net("10.244.3.0/24"), peer("10.0.0.3", m)),
        ]);
        let v = me.check(&peers, Instant::now());
        assert_eq!(
            v.among_peers,
            vec![(
                m,
                vec![net("10.244.2.0/24").into(), net("10.244.3.0/24").into()]
            )]
        );
        assert!(v.change_to.is_none());
        assert!(v
            .describe_among_peers()
            .unwrap()
            .contains("02:00:00:00:00:07"));
    }
}
