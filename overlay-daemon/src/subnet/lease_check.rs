//! Which peer leases may be programmed. Anyone who can write to etcd can put a lease there, and flanneld
//! programs whatever it finds; here a lease becomes a peer only if every field the data plane uses makes
//! sense for this network. The others are skipped with one log line each (when a lease becomes invalid or
//! its reason changes, and at most [`LOG_BURST`] lines per minute overall) and counted by reason.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::BackendKind;
use crate::subnet::lease::Lease;

/// Why a lease is not programmed. The names are the `reason` label of `twilld_invalid_leases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalid {
    /// The value is not a lease (not JSON, or a field of the wrong type).
    Json,
    /// Unspecified, "this network", loopback, multicast, broadcast, reserved, or our own address.
    PublicIp,
    BackendType,
    /// Missing, or not the VNI of our device.
    Vni,
    /// Missing, unparsable, multicast or all-zero.
    VtepMac,
    SubnetOutsideNetwork,
    SubnetLength,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Json => "json",
            Invalid::PublicIp => "public_ip",
            Invalid::BackendType => "backend_type",
            Invalid::Vni => "vni",
            Invalid::VtepMac => "vtep_mac",
            Invalid::SubnetOutsideNetwork => "subnet_outside_network",
            Invalid::SubnetLength => "subnet_length",
        }
    }
}

/// What a peer lease must match.
#[derive(Debug, Clone)]
pub struct Expect {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub vni: u32,
    pub own_public_ip: Ipv4Addr,
    /// The network's backend: a peer's lease must be of the same type.
    pub kind: BackendKind,
}

fn bad_address(ip: Ipv4Addr, own: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified or \"this network\" address")
    } else if ip.is_loopback() {
        Some("loopback address (of another host)")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("broadcast or reserved address")
    } else if ip == own {
        Some("our own address")
    } else {
        None
    }
}

/// Checks a lease of another node; the error carries a reason and a human explanation.
pub fn check(lease: &Lease, e: &Expect) -> Result<(), (Invalid, String)> {
    let s = lease.subnet;
    if !e.network.contains(&s) {
        return Err((
            Invalid::SubnetOutsideNetwork,
            format!("subnet {s} is outside the network {}", e.network),
        ));
    }
    if s.prefix_len() != e.subnet_len {
        return Err((
            Invalid::SubnetLength,
            format!(
                "prefix length {} instead of {}",
                s.prefix_len(),
                e.subnet_len
            ),
        ));
    }
    let a = &lease.attrs;
    if let Some(why) = bad_address(a.public_ip, e.own_public_ip) {
        return Err((
            Invalid::PublicIp,
            format!("PublicIP {} is a {why}", a.public_ip),
        ));
    }
    let want = e.kind.lease_type();
    if a.backend_type != want {
        return Err((
            Invalid::BackendType,
            format!("BackendType {:?} is not {want:?}", a.backend_type),
        ));
    }
    if e.kind == BackendKind::HostGw {
        // A host-gw peer is reached at its PublicIP: its BackendData (none, as flanneld writes it) is not used.
        return Ok(());
    }
    let data = a.backend_data.as_ref();
    match data.and_then(|d| d.get("VNI")).and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(e.vni) => {}
        Some(v) => return Err((Invalid::Vni, format!("VNI {v} instead of {}", e.vni))),
        None => return Err((Invalid::Vni, "no VNI in BackendData".into())),
    }
    match a.vtep_mac() {
        Some(m) if m.is_valid_unicast() => Ok(()),
        Some(m) => Err((
            Invalid::VtepMac,
            format!("VtepMAC {m} is not a unicast address"),
        )),
        None => Err((
            Invalid::VtepMac,
            format!(
                "VtepMAC {} is missing or not a MAC address",
                data.and_then(|d| d.get("VtepMAC"))
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(none)".into())
            ),
        )),
    }
}

/// Lines per minute the invalid-lease log may write; the rest are counted and summarised.
pub const LOG_BURST: u32 = 20;

/// The invalid leases currently known, for the metric, and the rate-limited log of changes to them.
#[derive(Debug, Default)]
pub struct InvalidLeases {
    current: BTreeMap<Ipv4Net, Invalid>,
    /// Changed since the last `take_changed` (the metric is republished only then).
    changed: bool,
    window: Option<Instant>,
    lines: u32,
    suppressed: u32,
}

impl InvalidLeases {
    /// Records `subnet` as invalid; logs it if it is new or its reason changed.
    pub fn set(&mut self, subnet: Ipv4Net, why: Invalid, detail: &str) {
        if self.current.insert(subnet, why) != Some(why) {
            self.changed = true;
            self.log(format!(
                "skipping invalid lease {subnet} ({}): {detail}",
                why.reason()
            ));
        }
    }

    pub fn clear(&mut self, subnet: Ipv4Net) {
        self.changed |= self.current.remove(&subnet).is_some();
    }

    /// Keeps only the subnets in `keep` (after a full listing).
    pub fn retain(&mut self, keep: impl Fn(&Ipv4Net) -> bool) {
        let before = self.current.len();
        self.current.retain(|s, _| keep(s));
        self.changed |= self.current.len() != before;
    }

    /// Whether anything changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn by_reason(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for why in self.current.values() {
            *m.entry(why.reason()).or_insert(0) += 1;
        }
        m
    }

    fn log(&mut self, line: String) {
        let now = Instant::now();
        let fresh = self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60));
        if fresh {
            if self.suppressed > 0 {
                tracing::info!(
                    "{} more invalid-lease lines were suppressed in the last minute",
                    self.suppressed
                );
            }
            self.window = Some(now);
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < LOG_BURST {
            self.lines += 1;
            tracing::warn!("{line}");
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::{LeaseAttrs, VtepMac};

    fn expect() -> Expect {
        Expect {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            own_public_ip: "10.0.0.1".parse().unwrap(),
            kind: BackendKind::Vxlan,
        }
    }

    fn lease(subnet: &str, json: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            attrs: serde_json::from_str(json).unwrap(),
            lease_id: 1,
        }
    }

    fn reason(subnet: &str, json: &str) -> Option<&'static str> {
        check(&lease(subnet, json), &expect())
            .err()
            .map(|(r, _)| r.reason())
    }

    fn flannel(ip: &str, vni: &str, mac: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
        )
    }

    #[test]
    fn a_lease_as_flanneld_writes_it_is_valid() {
        assert_eq!(
            reason(
                "10.244.2.0/24",
                &flannel("10.0.0.2", "1", "c6:d2:32:6f:8f:44")
            ),
            None
        );
        let a = LeaseAttrs::vxlan(
            "10.0.0.3".parse().unwrap(),
            1,
            VtepMac([2, 1, 2, 3, 4, 5]),
            "n",
        );
        let l = Lease {
            subnet: "10.244.3.0/24".parse().unwrap(),
            attrs: a,
            lease_id: 0,
        };
        assert!(check(&l, &expect()).is_ok());
    }

    #[test]
    fn a_host_gw_lease_as_flanneld_writes_it_is_valid_only_on_a_host_gw_network() {
        let hg = Expect {
            kind: BackendKind::HostGw,
            ..expect()
        };
        let l = lease(
            "10.244.2.0/24",
            r#"{"PublicIP":"10.0.0.2","BackendType":"host-gw"}"#,
        );
        assert!(check(&l, &hg).is_ok());
        let ours = Lease {
            subnet: "10.244.3.0/24".parse().unwrap(),
            attrs: LeaseAttrs::host_gw("10.0.0.3".parse().unwrap(), "n"),
            lease_id: 0,
        };
        assert!(check(&ours, &hg).is_ok());
        assert_eq!(
            check(&l, &expect()).err().map(|(r, _)| r.reason()),
            Some("backend_type")
        );
        let vx = lease(
            "10.244.2.0/24",
            &flannel("10.0.0.2", "1", "c6:d2:32:6f:8f:44"),
        );
        assert_eq!(
            check(&vx, &hg).err().map(|(r, _)| r.reason()),
            Some("backend_type")
        );
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        let ok_mac = "c6:d2:32:6f:8f:44";
        for (ip, want) in [
            ("0.0.0.0", "public_ip"),
            ("127.0.0.1", "public_ip"),
            ("224.0.0.1", "public_ip"),
            ("255.255.255.255", "public_ip"),
            ("10.0.0.1", "public_ip"),
        ] {
            assert_eq!(
                reason("10.244.2.0/24", &flannel(ip, "1", ok_mac)),
                Some(want),
                "{ip}"
            );
        }
        assert_eq!(
            reason("10.244.2.0/24", &flannel("10.0.0.2", "2", ok_mac)),
            Some("vni")
        );
        assert_eq!(
            reason(
                "10.244.2.0/24",
                r#"{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
            ),
            Some("vni")
        );
        assert_eq!(
            reason(
                "10.244.2.0/24",
                r#"{"PublicIP":"10.0.0.2","BackendType":"udp"}"#
            ),
            Some("backend_type")
        );
        assert_eq!(
            reason(
                "10.244.2.0/24",
                &flannel("10.0.0.2", "1", "01:00:5e:00:00:01")
            ),
            Some("vtep_mac")
        );
        assert_eq!(
            reason(
                "10.244.2.0/24",
                &flannel("10.0.0.2", "1", "00:00:00:00:00:00")
            ),
            Some("vtep_mac")
        );
        assert_eq!(
            reason("10.244.2.0/24", &flannel("10.0.0.2", "1", "zz")),
            Some("vtep_mac")
        );
        assert_eq!(
            reason("10.245.2.0/24", &flannel("10.0.0.2", "1", ok_mac)),
            Some("subnet_outside_network")
        );
        assert_eq!(
            reason("10.244.2.0/25", &flannel("10.0.0.2", "1", ok_mac)),
            Some("subnet_length")
        );
    }

    #[test]
    fn an_invalid_lease_is_logged_once_and_counted_by_reason() {
        let mut t = InvalidLeases::default();
        let s: Ipv4Net = "10.244.9.0/24".parse().unwrap();
        t.set(s, Invalid::Vni, "x");
        t.set(s, Invalid::Vni, "x");
        assert_eq!(t.lines, 1);
        t.set(s, Invalid::Json, "y");
        assert_eq!(t.lines, 2);
        assert_eq!(t.by_reason(), BTreeMap::from([("json", 1)]));
        t.clear(s);
        assert!(t.by_reason().is_empty());
        for i in 0..(LOG_BURST + 5) {
            t.set(
                Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap(),
                Invalid::Vni,
                "z",
            );
        }
        assert_eq!(t.suppressed, 7);
    }
}
