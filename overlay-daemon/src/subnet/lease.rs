//! Lease records in flannel's etcd layout (docs/architecture.md, "etcd layout"): key
//! `<prefix>/subnets/<a.b.c.d>-<len>` (dual stack: `<a.b.c.d>-<len>&<v6 address>-<len6>`), value
//! `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":..,"VtepMAC":..}}` (dual stack:
//! `PublicIPv6` the node's IPv6 underlay address and `BackendV6Data` the same object for `flannel-v6.<VNI>`).
//!
//! We add one field, `NodeName`, so a node keeps its subnet when its address changes (docs/architecture.md, "Subnet
//! acquisition"); flanneld's Go decoder ignores unknown fields, so both daemons still read each other's leases.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use twill_kernel::MacAddr;

/// A VXLAN tunnel endpoint MAC address: `twill-kernel`'s [`MacAddr`] (its parser and form, which accept what Go's
/// `net.ParseMAC` accepts in flanneld's colon and dash forms), with what a VTEP MAC adds: derivation from the
/// node's identity and the unicast check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VtepMac(pub [u8; 6]);

impl fmt::Display for VtepMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&MacAddr::from(*self), f)
    }
}

impl std::str::FromStr for VtepMac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<MacAddr>()
            .map(VtepMac::from)
            .map_err(|_| format!("{s:?} is not a MAC address"))
    }
}

impl From<MacAddr> for VtepMac {
    fn from(m: MacAddr) -> Self {
        VtepMac(m.0)
    }
}

impl From<VtepMac> for MacAddr {
    fn from(m: VtepMac) -> Self {
        MacAddr(m.0)
    }
}

impl VtepMac {
    /// A stable, locally administered unicast MAC derived from the node name, the public IP, the VNI and a
    /// generation (raised only to step away from a MAC another node already uses, see [`crate::vtep_mac`]).
    /// Derived rather than random, so the same node gets the same VTEP MAC after a daemon restart or a reboot
    /// that wiped /run and peers need no update; the public IP is part of it because node names are not
    /// unique in practice (cloned machines, nodes in namespaces of one host all default to one hostname),
    /// while the public IP is unique on the underlay by construction (it is the VXLAN tunnel endpoint). A
    /// persisted random MAC was not chosen: a cloned disk would clone it too. FNV-1a is used because its
    /// output is fixed forever, unlike std's hasher.
    /// The IPv6 device's MAC is derived from the node's IPv6 underlay address (16 bytes instead of 4), so it
    /// differs from the IPv4 device's.
    pub fn derive(node_name: &str, public_ip: IpAddr, vni: u32, generation: u32) -> VtepMac {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let octets: Vec<u8> = match public_ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let bytes = node_name
            .bytes()
            .chain([0])
            .chain(octets)
            .chain(vni.to_be_bytes())
            .chain(generation.to_be_bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // FNV-1a barely mixes its last input bytes into the high bytes used here (generation 0 and 1 would
        // differ in one bit); the splitmix64 finaliser spreads every input bit over the whole MAC.
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let b = h.to_be_bytes();
        let mut m = [b[0], b[1], b[2], b[3], b[4], b[5]];
        m[0] = (m[0] | 0x02) & 0xfe;
        VtepMac(m)
    }

    /// A unicast address other than all-zero (a multicast VTEP MAC would make the neighbour entry flood).
    pub fn is_valid_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

/// The JSON value of a lease key. Field names are flannel's `LeaseAttrs` JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// `null` when the node has no IPv6 underlay, as flanneld writes it (a nil pointer, no `omitempty`).
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
    #[serde(rename = "NodeName", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl LeaseAttrs {
    /// A vxlan lease: for each family the node runs, its underlay address and its device's VTEP MAC
    /// (`BackendData` for `flannel.<VNI>`, `BackendV6Data` for `flannel-v6.<VNI>`). An IPv6-only node has
    /// `PublicIP` "0.0.0.0" and no `BackendData`, as flanneld writes it.
    pub fn vxlan(
        v4: Option<(Ipv4Addr, VtepMac)>,
        v6: Option<(Ipv6Addr, VtepMac)>,
        vni: u32,
        node_name: &str,
    ) -> Self {
        let data = |mac: VtepMac| serde_json::json!({"VNI": vni, "VtepMAC": mac.to_string()});
        LeaseAttrs {
            public_ip: v4.map(|(ip, _)| ip).unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: v6.map(|(ip, _)| ip),
            backend_type: "vxlan".into(),
            backend_data: v4.map(|(_, m)| data(m)),
            backend_v6_data: v6.map(|(_, m)| data(m)),
            node_name: Some(node_name.to_string()),
        }
    }

    /// A host-gw lease as flanneld writes it: `BackendType` "host-gw" and no `BackendData` (the peer is reached
    /// at its `PublicIP` / `PublicIPv6`, nothing else is needed).
    pub fn host_gw(
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
        node_name: &str,
    ) -> Self {
        LeaseAttrs {
            public_ip: public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            node_name: Some(node_name.to_string()),
        }
    }

    /// The address that identifies the node (flannel's: `PublicIP`; an IPv6-only node has only `PublicIPv6`).
    pub fn identity_ip(&self) -> IpAddr {
        match self.public_ipv6 {
            Some(v6) if self.public_ip.is_unspecified() => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }

    /// The VTEP MAC of a vxlan lease, if the lease is a usable vxlan lease (docs/architecture.md, "VXLAN
    /// programming": only leases with `BackendType == "vxlan"` are considered).
    pub fn vtep_mac(&self) -> Option<VtepMac> {
        vtep_mac_in(&self.backend_type, self.backend_data.as_ref())
    }

    /// The VTEP MAC of the IPv6 device, from `BackendV6Data`.
    pub fn vtep_mac_v6(&self) -> Option<VtepMac> {
        vtep_mac_in(&self.backend_type, self.backend_v6_data.as_ref())
    }

    /// The same attributes with another VTEP MAC for one family's device.
    pub fn with_mac(&self, v6: bool, mac: VtepMac) -> Self {
        let mut a = self.clone();
        let data = if v6 {
            a.backend_v6_data.as_mut()
        } else {
            a.backend_data.as_mut()
        };
        if let Some(serde_json::Value::Object(d)) = data {
            d.insert("VtepMAC".into(), mac.to_string().into());
        }
        a
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn vtep_mac_in(backend_type: &str, data: Option<&serde_json::Value>) -> Option<VtepMac> {
    if backend_type != "vxlan" {
        return None;
    }
    data?.get("VtepMAC")?.as_str()?.parse().ok()
}

/// What a lease key names: a node's IPv4 subnet, its IPv6 subnet, or both. It is the lease's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    pub fn v4(subnet: Ipv4Net) -> Self {
        SubnetKey {
            v4: Some(subnet),
            v6: None,
        }
    }

    /// The last element of the etcd key, as flanneld names it: `10.244.2.0-24`, dual stack
    /// `10.244.2.0-24&fd00:42:0:2::-64`. An IPv6-only lease has no IPv4 subnet; flanneld's key format requires
    /// one, and flanneld itself writes the empty one, `0.0.0.0-0&fd00:42:0:2::-64`.
    pub fn etcd_name(&self) -> String {
        let v4 = match self.v4 {
            Some(s) => format!("{}-{}", s.network(), s.prefix_len()),
            None => "0.0.0.0-0".to_string(),
        };
        match self.v6 {
            Some(s) => format!("{v4}&{}-{}", s.network(), s.prefix_len()),
            None => v4,
        }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} + {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => write!(f, "(no subnet)"),
        }
    }
}

/// Parses the last path element of a subnets key (flanneld's pattern: `<v4>-<len>` with an optional
/// `&<v6>-<len6>`; `0.0.0.0-0` is "no IPv4 subnet"). Anything else, and subnets with host bits set, are not a
/// lease (docs/architecture.md, "etcd layout": ignored with a warning by the caller).
pub fn parse_subnet_key(key: &str) -> Option<SubnetKey> {
    let last = key.rsplit('/').next()?;
    let (v4, v6) = match last.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (last, None),
    };
    let (addr, len) = v4.split_once('-')?;
    let v4 = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    if v4.network() != v4.addr() {
        return None;
    }
    let v6 = match v6 {
        None => None,
        Some(text) => {
            let (addr, len) = text.rsplit_once('-')?;
            let net = Ipv6Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
            if net.network() != net.addr() {
                return None;
            }
            Some(net)
        }
    };
    let v4 = (v4.prefix_len() != 0).then_some(v4);
    (v4.is_some() || v6.is_some()).then_some(SubnetKey { v4, v6 })
}

/// A lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// The etcd lease id; 0 = a key without lease, i.e. a permanent reservation (docs/architecture.md, "etcd
    /// layout").
    pub lease_id: i64,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.lease_id == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_round_trip_and_reject_garbage() {
        let n: Ipv4Net = "10.5.52.0/24".parse().unwrap();
        let six: Ipv6Net = "fd00:42::/64".parse().unwrap();
        assert_eq!(SubnetKey::v4(n).etcd_name(), "10.5.52.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24"),
            Some(SubnetKey::v4(n))
        );
        let dual = SubnetKey {
            v4: Some(n),
            v6: Some(six),
        };
        assert_eq!(dual.etcd_name(), "10.5.52.0-24&fd00:42::-64");
        assert_eq!(
            parse_subnet_key("/x/subnets/10.5.52.0-24&fd00:42::-64"),
            Some(dual)
        );
        let only6 = SubnetKey {
            v4: None,
            v6: Some(six),
        };
        assert_eq!(only6.etcd_name(), "0.0.0.0-0&fd00:42::-64");
        assert_eq!(
            parse_subnet_key("/x/subnets/0.0.0.0-0&fd00:42::-64"),
            Some(only6)
        );
        assert_eq!(parse_subnet_key("/x/subnets/10.5.52.1-24"), None);
        assert_eq!(
            parse_subnet_key("/x/subnets/10.5.52.0-24&fd00:42::1-64"),
            None
        );
        assert_eq!(parse_subnet_key("/x/subnets/10.5.52.0-24&banana-64"), None);
        assert_eq!(parse_subnet_key("/x/subnets/0.0.0.0-0"), None);
        assert_eq!(parse_subnet_key("/x/subnets/hello"), None);
    }

    #[test]
    fn vtep_macs_parse_as_go_parse_mac_in_its_colon_and_dash_forms() {
        let mac: VtepMac = "C6-D2-32-6F-8F-44".parse().unwrap();
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(MacAddr::from(mac), "c6:d2:32:6f:8f:44".parse().unwrap());
        for bad in [
            "c6:d2:32:6f:8f:4",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "",
            "zz:d2:32:6f:8f:44",
        ] {
            assert!(bad.parse::<VtepMac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_json_matches_flannel() {
        let mac: VtepMac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let a = LeaseAttrs::vxlan(Some(("192.168.64.3".parse().unwrap(), mac)), None, 1, "n1");
        let j = a.to_json();
        assert!(j.starts_with(r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#), "{j}");
        let flannel = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let b: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(b.vtep_mac(), Some(mac));
        assert_eq!(b.vtep_mac_v6(), None);
        assert_eq!(b.node_name, None);
    }

    /// flanneld's dual-stack lease (`LeaseAttrs` with both families, field order as Go's encoder writes it).
    #[test]
    fn dual_stack_lease_json_matches_flannel() {
        let mac: VtepMac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let mac6: VtepMac = "7a:11:22:33:44:55".parse().unwrap();
        let a = LeaseAttrs::vxlan(
            Some(("192.168.64.3".parse().unwrap(), mac)),
            Some(("fd00:1::3".parse().unwrap(), mac6)),
            1,
            "n1",
        );
        let flannel = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:1::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:11:22:33:44:55"}}"#;
        let j = a.to_json();
        assert!(j.starts_with(&flannel[..flannel.len() - 1]), "{j}");
        let b: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(b.vtep_mac(), Some(mac));
        assert_eq!(b.vtep_mac_v6(), Some(mac6));
        assert_eq!(b.public_ipv6, Some("fd00:1::3".parse().unwrap()));
        assert_eq!(b.identity_ip().to_string(), "192.168.64.3");
        assert_eq!(a.with_mac(true, mac).vtep_mac_v6(), Some(mac));

        let only6 = LeaseAttrs::vxlan(None, Some(("fd00:1::3".parse().unwrap(), mac6)), 1, "n1");
        let j = only6.to_json();
        assert!(j.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:1::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"7a:11:22:33:44:55"}"#), "{j}");
        assert_eq!(only6.identity_ip().to_string(), "fd00:1::3");
    }

    #[test]
    fn host_gw_lease_json_has_no_backend_data() {
        let a = LeaseAttrs::host_gw(Some("192.168.64.3".parse().unwrap()), None, "n1");
        let j = a.to_json();
        assert!(
            j.starts_with(
                r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"host-gw","NodeName""#
            ),
            "{j}"
        );
        assert_eq!(a.vtep_mac(), None);
    }

    #[test]
    fn derived_mac_is_stable_unicast_and_local() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = VtepMac::derive("node-a", ip, 1, 0);
        assert_eq!(a, VtepMac::derive("node-a", ip, 1, 0));
        assert_ne!(a, VtepMac::derive("node-b", ip, 1, 0));
        assert_ne!(
            a,
            VtepMac::derive("node-a", "10.0.0.2".parse().unwrap(), 1, 0)
        );
        let next = VtepMac::derive("node-a", ip, 1, 1);
        let differing_bits: u32 =
            a.0.iter()
                .zip(next.0)
                .map(|(x, y)| (x ^ y).count_ones())
                .sum();
        assert!(differing_bits > 8, "{a} vs {next}");
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert!(a.is_valid_unicast());
    }
}
