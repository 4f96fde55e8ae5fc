//! Lease records in flannel's etcd layout (docs/architecture.md, "etcd layout"): key
//! `<prefix>/subnets/<a.b.c.d>-<len>`, value
//! `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":..,"VtepMAC":..}}`.
//!
//! We add one field, `NodeName`, so a node keeps its subnet when its address changes (docs/architecture.md, "Subnet
//! acquisition"); flanneld's Go decoder ignores unknown fields, so both daemons still read each other's leases.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A VXLAN tunnel endpoint MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VtepMac(pub [u8; 6]);

impl fmt::Display for VtepMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for VtepMac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(VtepMac(out))
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
    pub fn derive(node_name: &str, public_ip: Ipv4Addr, vni: u32, generation: u32) -> VtepMac {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = node_name
            .bytes()
            .chain([0])
            .chain(public_ip.octets())
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
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(rename = "NodeName", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl LeaseAttrs {
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, mac: VtepMac, node_name: &str) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({"VNI": vni, "VtepMAC": mac.to_string()})),
            node_name: Some(node_name.to_string()),
        }
    }

    /// A host-gw lease as flanneld writes it: `BackendType` "host-gw" and no `BackendData` (the peer is reached
    /// at its `PublicIP`, nothing else is needed).
    pub fn host_gw(public_ip: Ipv4Addr, node_name: &str) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            node_name: Some(node_name.to_string()),
        }
    }

    /// The VTEP MAC of a vxlan lease, if the lease is a usable vxlan lease (docs/architecture.md, "VXLAN
    /// programming": only leases with `BackendType == "vxlan"` are considered).
    pub fn vtep_mac(&self) -> Option<VtepMac> {
        if self.backend_type != "vxlan" {
            return None;
        }
        self.backend_data
            .as_ref()?
            .get("VtepMAC")?
            .as_str()?
            .parse()
            .ok()
    }

    /// The same attributes with another VTEP MAC.
    pub fn with_mac(&self, mac: VtepMac) -> Self {
        let mut a = self.clone();
        if let Some(serde_json::Value::Object(d)) = a.backend_data.as_mut() {
            d.insert("VtepMAC".into(), mac.to_string().into());
        }
        a
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `10.244.2.0/24` <-> `10.244.2.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses the last path element of a subnets key; dual-stack keys (`...&v6-len`) yield their v4 half.
/// Anything else is not a lease (docs/architecture.md, "etcd layout": ignored with a warning by the caller).
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    let (addr, len) = v4.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// A lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Net,
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
        assert_eq!(subnet_key(n), "10.5.52.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24"),
            Some(n)
        );
        assert_eq!(
            parse_subnet_key("/x/subnets/10.5.52.0-24&fd00:42::-64"),
            Some(n)
        );
        assert_eq!(parse_subnet_key("/x/subnets/10.5.52.1-24"), None);
        assert_eq!(parse_subnet_key("/x/subnets/hello"), None);
    }

    #[test]
    fn lease_json_matches_flannel() {
        let mac: VtepMac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let a = LeaseAttrs::vxlan("192.168.64.3".parse().unwrap(), 1, mac, "n1");
        let j = a.to_json();
        assert!(j.starts_with(r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#), "{j}");
        let flannel = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let b: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(b.vtep_mac(), Some(mac));
        assert_eq!(b.node_name, None);
    }

    #[test]
    fn host_gw_lease_json_has_no_backend_data() {
        let a = LeaseAttrs::host_gw("192.168.64.3".parse().unwrap(), "n1");
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
        let ip: Ipv4Addr = "10.0.0.1".parse().unwrap();
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
