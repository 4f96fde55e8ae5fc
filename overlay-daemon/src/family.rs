//! The two address families of a dual-stack overlay. Everything that allocates, checks or programs one
//! family's subnets is written once, generic over [`Family`] (implemented by `Ipv4Net` and `Ipv6Net`); a
//! dual-stack node runs one instance per family (one reconciler and one device each), as flanneld runs a
//! `flannel.<VNI>` and a `flannel-v6.<VNI>` device.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::subnet::lease::{LeaseAttrs, SubnetKey};

/// A node subnet of one address family.
pub trait Family:
    Copy + Ord + Eq + Hash + Debug + Display + Send + Sync + Into<ipnet::IpNet> + 'static
{
    type Addr: Copy + Ord + Eq + Hash + Debug + Display + Send + Sync + Into<IpAddr> + 'static;
    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;
    const IS_V6: bool;
    /// Address width in bits.
    const BITS: u8;

    fn from_bits(addr: u128, len: u8) -> Option<Self>;
    fn addr_bits(addr: Self::Addr) -> u128;
    fn addr_from_bits(bits: u128) -> Self::Addr;
    fn network_addr(&self) -> Self::Addr;
    fn prefix(&self) -> u8;
    /// This family's subnet in a lease key.
    fn of_key(key: &SubnetKey) -> Option<Self>;
    /// The peer's underlay address for this family (`PublicIP` / `PublicIPv6`).
    fn public_ip(attrs: &LeaseAttrs) -> Option<Self::Addr>;
    /// The backend's data for this family (`BackendData` / `BackendV6Data`).
    fn backend_data(attrs: &LeaseAttrs) -> Option<&serde_json::Value>;
    /// Why `ip` cannot be a peer's underlay address (`own` is ours), if it cannot.
    fn bad_address(ip: Self::Addr, own: Option<Self::Addr>) -> Option<&'static str>;

    /// This family's half of a kernel destination.
    fn from_ipnet(net: &IpNet) -> Option<Self>;
    /// An address of this family.
    fn from_ip(ip: &IpAddr) -> Option<Self::Addr>;

    fn network_bits(&self) -> u128 {
        Self::addr_bits(self.network_addr())
    }

    /// Whether the two subnets share an address.
    fn overlaps(&self, other: &Self) -> bool {
        let len = self.prefix().min(other.prefix());
        let mask = mask(Self::BITS, len);
        self.network_bits() & mask == other.network_bits() & mask
    }

    /// Whether `other` lies inside `self`.
    fn contains_net(&self, other: &Self) -> bool {
        other.prefix() >= self.prefix() && self.overlaps(other)
    }
}

/// The netmask of a `len`-bit prefix in a `bits`-bit address, as the low bits of a u128.
fn mask(bits: u8, len: u8) -> u128 {
    let all: u128 = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if len == 0 {
        0
    } else {
        all & !((1u128 << (bits - len)) - 1)
    }
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    const NAME: &'static str = "IPv4";
    const IS_V6: bool = false;
    const BITS: u8 = 32;

    fn from_bits(addr: u128, len: u8) -> Option<Self> {
        let a = u32::try_from(addr).ok()?;
        Ipv4Net::new(Ipv4Addr::from(a), len).ok()
    }
    fn addr_bits(addr: Ipv4Addr) -> u128 {
        u128::from(u32::from(addr))
    }
    fn addr_from_bits(bits: u128) -> Ipv4Addr {
        Ipv4Addr::from(bits as u32)
    }
    fn network_addr(&self) -> Ipv4Addr {
        self.network()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn of_key(key: &SubnetKey) -> Option<Self> {
        key.v4
    }
    fn from_ipnet(net: &IpNet) -> Option<Self> {
        match net {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        }
    }
    fn from_ip(ip: &IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }
    }
    fn public_ip(attrs: &LeaseAttrs) -> Option<Ipv4Addr> {
        Some(attrs.public_ip)
    }
    fn backend_data(attrs: &LeaseAttrs) -> Option<&serde_json::Value> {
        attrs.backend_data.as_ref()
    }
    fn bad_address(ip: Ipv4Addr, own: Option<Ipv4Addr>) -> Option<&'static str> {
        let o = ip.octets();
        if ip.is_unspecified() || o[0] == 0 {
            Some("unspecified or \"this network\" address")
        } else if ip.is_loopback() {
            Some("loopback address (of another host)")
        } else if ip.is_multicast() {
            Some("multicast address")
        } else if ip.is_broadcast() || o[0] >= 240 {
            Some("broadcast or reserved address")
        } else if Some(ip) == own {
            Some("our own address")
        } else {
            None
        }
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    const NAME: &'static str = "IPv6";
    const IS_V6: bool = true;
    const BITS: u8 = 128;

    fn from_bits(addr: u128, len: u8) -> Option<Self> {
        Ipv6Net::new(Ipv6Addr::from(addr), len).ok()
    }
    fn addr_bits(addr: Ipv6Addr) -> u128 {
        u128::from(addr)
    }
    fn addr_from_bits(bits: u128) -> Ipv6Addr {
        Ipv6Addr::from(bits)
    }
    fn network_addr(&self) -> Ipv6Addr {
        self.network()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn of_key(key: &SubnetKey) -> Option<Self> {
        key.v6
    }
    fn from_ipnet(net: &IpNet) -> Option<Self> {
        match net {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        }
    }
    fn from_ip(ip: &IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }
    }
    fn public_ip(attrs: &LeaseAttrs) -> Option<Ipv6Addr> {
        attrs.public_ipv6
    }
    fn backend_data(attrs: &LeaseAttrs) -> Option<&serde_json::Value> {
        attrs.backend_v6_data.as_ref()
    }
    fn bad_address(ip: Ipv6Addr, own: Option<Ipv6Addr>) -> Option<&'static str> {
        let s = ip.segments();
        if ip.is_unspecified() {
            Some("unspecified address")
        } else if ip.is_loopback() {
            Some("loopback address (of another host)")
        } else if ip.is_multicast() {
            Some("multicast address")
        } else if s[0] & 0xffc0 == 0xfe80 {
            // A link-local next hop needs a zone, which a lease cannot carry.
            Some("link-local address")
        } else if ip.to_ipv4_mapped().is_some() {
            Some("IPv4-mapped address")
        } else if Some(ip) == own {
            Some("our own address")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_containment_in_both_families() {
        let a: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let c: Ipv4Net = "10.245.3.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && a.contains_net(&b) && !b.contains_net(&a));
        assert!(!a.overlaps(&c));
        let x: Ipv6Net = "fd00:42::/56".parse().unwrap();
        let y: Ipv6Net = "fd00:42:0:3::/64".parse().unwrap();
        let z: Ipv6Net = "fd00:43::/64".parse().unwrap();
        assert!(x.contains_net(&y) && !x.overlaps(&z));
        let all: Ipv6Net = "::/0".parse().unwrap();
        assert!(all.contains_net(&z));
    }

    #[test]
    fn v6_peer_addresses_that_cannot_be_a_next_hop_are_named() {
        for bad in ["::", "::1", "ff02::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(
                Ipv6Net::bad_address(bad.parse().unwrap(), None).is_some(),
                "{bad}"
            );
        }
        let own: Ipv6Addr = "fd00::1".parse().unwrap();
        assert!(Ipv6Net::bad_address(own, Some(own)).is_some());
        assert!(Ipv6Net::bad_address("fd00::2".parse().unwrap(), Some(own)).is_none());
    }
}
