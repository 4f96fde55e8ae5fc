//! flannel's node annotations: the names under `--kube-annotation-prefix`, what this node publishes, and how a
//! peer's annotations and podCIDR become a [`Lease`]. The values are written exactly as flanneld writes them, so
//! flanneld and twilld nodes read each other: `backend-data` is the compact JSON `{"VNI":1,"VtepMAC":"..."}`,
//! `public-ip` the dotted quad, `kube-subnet-manager` the string `true`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::pod_cidr::{Families, PodCidrs};
use crate::subnet::lease::{Lease, LeaseAttrs, SubnetKey};

/// The full annotation names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    pub kube_managed: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub backend_type: String,
    pub public_ip: String,
    pub public_ipv6: String,
    /// Set by an administrator: the address to advertise instead of ours (a node behind NAT).
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    /// Set by an administrator: the address to use as `--public-ip`.
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl Annotations {
    /// flanneld's rules: `example.com` means `example.com/<name>`, `example.com/abc` means
    /// `example.com/abc-<name>`; the result must be a valid Kubernetes annotation key (a lower-case DNS
    /// prefix, at most one slash).
    pub fn new(prefix: &str) -> Result<Self, String> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => {
                return Err(format!(
                    "--kube-annotation-prefix {prefix:?}: at most one slash is allowed"
                ))
            }
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        if !valid_prefix(&p) {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: must be a lower-case DNS name, optionally followed by \
                 /name (letters, digits, '-', '_')"
            ));
        }
        let n = |s: &str| format!("{p}{s}");
        Ok(Annotations {
            kube_managed: n("kube-subnet-manager"),
            backend_data: n("backend-data"),
            backend_v6_data: n("backend-v6-data"),
            backend_type: n("backend-type"),
            public_ip: n("public-ip"),
            public_ipv6: n("public-ipv6"),
            public_ip_overwrite: n("public-ip-overwrite"),
            public_ipv6_overwrite: n("public-ipv6-overwrite"),
            node_public_ip: n("node-public-ip"),
            node_public_ipv6: n("node-public-ipv6"),
        })
    }

    /// What this node publishes for `attrs`, given the node's current annotations (an administrator's
    /// `public-ip-overwrite` / `public-ipv6-overwrite` replaces the advertised address, as in flanneld). As
    /// flanneld: a vxlan node publishes `backend-data` and `public-ip` only with an IPv4 device, and
    /// `backend-v6-data` and `public-ipv6` only with an IPv6 device; a host-gw node always publishes the IPv4
    /// pair, and the IPv6 pair (`backend-v6-data` "null") when it has an IPv6 public address.
    pub fn wanted(
        &self,
        attrs: &LeaseAttrs,
        current: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let vxlan = attrs.backend_type == "vxlan";
        let mut out = BTreeMap::from([
            (self.backend_type.clone(), attrs.backend_type.clone()),
            (self.kube_managed.clone(), "true".to_string()),
        ]);
        if !vxlan || attrs.backend_data.is_some() {
            let public_ip = match current.get(&self.public_ip_overwrite).map(String::as_str) {
                Some(o) if o.parse::<Ipv4Addr>().is_ok() => o.to_string(),
                _ => attrs.public_ip.to_string(),
            };
            out.insert(
                self.backend_data.clone(),
                json_or_null(attrs.backend_data.as_ref()),
            );
            out.insert(self.public_ip.clone(), public_ip);
        }
        let v6 = if vxlan {
            attrs.backend_v6_data.is_some()
        } else {
            attrs.public_ipv6.is_some()
        };
        if let (true, Some(ip6)) = (v6, attrs.public_ipv6) {
            let public_ipv6 = match current.get(&self.public_ipv6_overwrite).map(String::as_str) {
                Some(o) if o.parse::<Ipv6Addr>().is_ok() => o.to_string(),
                _ => ip6.to_string(),
            };
            out.insert(
                self.backend_v6_data.clone(),
                json_or_null(attrs.backend_v6_data.as_ref()),
            );
            out.insert(self.public_ipv6.clone(), public_ipv6);
        }
        out
    }

    /// The annotations of `wanted` that `current` lacks or holds with another value: empty when nothing needs
    /// to be patched.
    pub fn diff(
        wanted: &BTreeMap<String, String>,
        current: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        wanted
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The public IP an administrator stored for this node (`node-public-ip`), used when `--public-ip` is not
    /// given.
    pub fn node_public_ip(&self, current: &BTreeMap<String, String>) -> Option<Ipv4Addr> {
        current.get(&self.node_public_ip)?.trim().parse().ok()
    }

    /// The same for `--public-ipv6` (`node-public-ipv6`).
    pub fn node_public_ipv6(&self, current: &BTreeMap<String, String>) -> Option<Ipv6Addr> {
        current.get(&self.node_public_ipv6)?.trim().parse().ok()
    }

    /// A peer node as a lease, in the families the network runs. `Ok(None)`: not a peer (no flannel-compatible
    /// daemon published it, or it lacks a podCIDR of a family the network runs). `Err`: it claims to be one, but
    /// its annotations cannot be used; the subnets are known.
    pub fn peer_lease(
        &self,
        node_name: &str,
        annotations: &BTreeMap<String, String>,
        pods: PodCidrs,
        families: Families,
    ) -> Result<Option<Lease>, (SubnetKey, String)> {
        if annotations.get(&self.kube_managed).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let Some(key) = pods.key(families) else {
            return Ok(None);
        };
        let bad = |what: String| Err((key, format!("node {node_name}: {what}")));
        let text = |name: &str, default: &'static str| {
            annotations
                .get(name)
                .map(String::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let json = |name: &str| match serde_json::from_str::<serde_json::Value>(&text(name, "null"))
        {
            Ok(serde_json::Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(format!("{name} is not JSON: {e}")),
        };
        let mut attrs = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: annotations
                .get(&self.backend_type)
                .cloned()
                .unwrap_or_default(),
            backend_data: None,
            backend_v6_data: None,
            node_name: Some(node_name.to_string()),
        };
        if families.v4 {
            let ip_text = text(&self.public_ip, "");
            let Ok(ip) = ip_text.parse::<Ipv4Addr>() else {
                return bad(format!(
                    "{} {ip_text:?} is not an IPv4 address",
                    self.public_ip
                ));
            };
            attrs.public_ip = ip;
            attrs.backend_data = match json(&self.backend_data) {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
        }
        if families.v6 {
            let ip_text = text(&self.public_ipv6, "");
            let Ok(ip) = ip_text.parse::<Ipv6Addr>() else {
                return bad(format!(
                    "{} {ip_text:?} is not an IPv6 address",
                    self.public_ipv6
                ));
            };
            attrs.public_ipv6 = Some(ip);
            attrs.backend_v6_data = match json(&self.backend_v6_data) {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
        }
        Ok(Some(Lease {
            key,
            attrs,
            // Nodes hold their podCIDR without expiry.
            lease_id: 0,
        }))
    }
}

/// `backend-data` / `backend-v6-data` as flanneld writes them: Go's compact JSON of the backend's attributes
/// (`VNI` before `VtepMAC`), or `null` for a backend without any (host-gw).
pub fn json_or_null(data: Option<&serde_json::Value>) -> String {
    match data {
        None => "null".to_string(),
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "null".to_string()),
    }
}

/// `(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?`, flanneld's check, without a regex engine.
fn valid_prefix(p: &str) -> bool {
    let Some((domain, rest)) = p.split_once('/') else {
        return false;
    };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2 && labels.iter().all(|l| label_ok(l));
    let rest_ok = rest.is_empty() || rest.strip_suffix('-').is_some_and(label_ok);
    domain_ok && rest_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv4Net;

    fn vxlan(ip: &str, mac: &str, node: &str) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Some((ip.parse().unwrap(), mac.parse().unwrap())),
            None,
            1,
            node,
        )
    }

    fn v4(subnet: Ipv4Net) -> PodCidrs {
        PodCidrs {
            v4: Some(subnet),
            v6: None,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn prefixes_follow_flanneld_rules() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            a.kube_managed,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(
            a.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        let a = Annotations::new("example.com/twill").unwrap();
        assert_eq!(a.backend_type, "example.com/twill-backend-type");
        let a = Annotations::new("example.com/twill-").unwrap();
        assert_eq!(a.public_ip, "example.com/twill-public-ip");
        for bad in [
            "a/b/c",
            "Example.com",
            "localhost",
            "example.com/UP",
            "exa mple.com",
            "",
        ] {
            assert!(Annotations::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn published_annotations_are_flanneld_bytes() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let attrs = vxlan("192.168.64.3", "12:c6:65:89:b4:e3", "n1");
        let w = a.wanted(&attrs, &BTreeMap::new());
        assert_eq!(
            w,
            map(&[
                (
                    "flannel.alpha.coreos.com/backend-data",
                    r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#
                ),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "192.168.64.3"),
            ])
        );
        let gw = LeaseAttrs::host_gw(Some("192.168.64.3".parse().unwrap()), None, "n1");
        assert_eq!(
            a.wanted(&gw, &BTreeMap::new())["flannel.alpha.coreos.com/backend-data"],
            "null"
        );
    }

    #[test]
    fn public_ip_overwrite_replaces_the_advertised_address() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let attrs = vxlan("10.0.0.5", "12:c6:65:89:b4:e3", "n1");
        let current = map(&[(
            "flannel.alpha.coreos.com/public-ip-overwrite",
            "203.0.113.7",
        )]);
        let w = a.wanted(&attrs, &current);
        assert_eq!(w["flannel.alpha.coreos.com/public-ip"], "203.0.113.7");
        // Garbage in the overwrite is not advertised.
        let current = map(&[("flannel.alpha.coreos.com/public-ip-overwrite", "nat-box")]);
        assert_eq!(
            a.wanted(&attrs, &current)["flannel.alpha.coreos.com/public-ip"],
            "10.0.0.5"
        );
    }

    #[test]
    fn only_changed_annotations_are_patched() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let attrs = vxlan("10.0.0.5", "12:c6:65:89:b4:e3", "n1");
        let mut current = a.wanted(&attrs, &BTreeMap::new());
        current.insert("other/annotation".into(), "kept".into());
        assert!(Annotations::diff(&a.wanted(&attrs, &current), &current).is_empty());
        current.insert(a.public_ip.clone(), "10.0.0.9".into());
        let d = Annotations::diff(&a.wanted(&attrs, &current), &current);
        assert_eq!(
            d,
            map(&[("flannel.alpha.coreos.com/public-ip", "10.0.0.5")])
        );
    }

    #[test]
    fn a_flanneld_node_decodes_as_a_lease() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let flanneld = map(&[
            (
                "flannel.alpha.coreos.com/backend-data",
                r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#,
            ),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "192.168.64.4"),
        ]);
        let subnet: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let l = a
            .peer_lease("w2", &flanneld, v4(subnet), Families::default())
            .unwrap()
            .unwrap();
        assert_eq!(l.key, SubnetKey::v4(subnet));
        assert_eq!(
            l.attrs.public_ip,
            "192.168.64.4".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            l.attrs.vtep_mac(),
            Some("12:c6:65:89:b4:e3".parse().unwrap())
        );
        assert_eq!(l.attrs.node_name.as_deref(), Some("w2"));
        // What we publish reads back as the same attributes.
        let ours = vxlan("192.168.64.4", "12:c6:65:89:b4:e3", "w2");
        assert_eq!(a.wanted(&ours, &BTreeMap::new()), flanneld);
        assert_eq!(l.attrs, ours);
    }

    #[test]
    fn nodes_without_flannel_or_podcidr_are_not_peers_and_garbage_is_reported() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let subnet: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let f = Families::default();
        assert_eq!(a.peer_lease("w", &BTreeMap::new(), v4(subnet), f), Ok(None));
        let managed = map(&[
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "192.168.64.4"),
            ("flannel.alpha.coreos.com/backend-type", "host-gw"),
            ("flannel.alpha.coreos.com/backend-data", "null"),
        ]);
        assert_eq!(
            a.peer_lease("w", &managed, PodCidrs::default(), f),
            Ok(None)
        );
        let l = a.peer_lease("w", &managed, v4(subnet), f).unwrap().unwrap();
        assert_eq!(
            (l.attrs.backend_type.as_str(), l.attrs.backend_data),
            ("host-gw", None)
        );
        let mut bad = managed.clone();
        bad.insert(a.public_ip.clone(), "192.168.64".into());
        let (s, e) = a.peer_lease("w", &bad, v4(subnet), f).unwrap_err();
        assert_eq!(s, SubnetKey::v4(subnet));
        assert!(e.contains("not an IPv4 address"), "{e}");
        let mut bad = managed;
        bad.insert(a.backend_data.clone(), "{".into());
        assert!(a
            .peer_lease("w", &bad, v4(subnet), f)
            .unwrap_err()
            .1
            .contains("not JSON"));
    }

    #[test]
    fn node_public_ip_annotations_are_read() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let m = map(&[
            ("flannel.alpha.coreos.com/node-public-ip", "192.0.2.10"),
            ("flannel.alpha.coreos.com/node-public-ipv6", "2001:db8::10"),
        ]);
        assert_eq!(a.node_public_ip(&m), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(
            a.node_public_ipv6(&m),
            Some("2001:db8::10".parse().unwrap())
        );
        assert_eq!(a.node_public_ip(&BTreeMap::new()), None);
        assert_eq!(a.node_public_ipv6(&BTreeMap::new()), None);
    }

    fn dual_vxlan() -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Some((
                "192.168.64.3".parse().unwrap(),
                "12:c6:65:89:b4:e3".parse().unwrap(),
            )),
            Some((
                "fd00:64::3".parse().unwrap(),
                "5a:0b:2c:11:22:33".parse().unwrap(),
            )),
            1,
            "n1",
        )
    }

    #[test]
    fn a_dual_stack_node_publishes_both_families_as_flanneld() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        assert_eq!(
            a.wanted(&dual_vxlan(), &BTreeMap::new()),
            map(&[
                (
                    "flannel.alpha.coreos.com/backend-data",
                    r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#
                ),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                (
                    "flannel.alpha.coreos.com/backend-v6-data",
                    r#"{"VNI":1,"VtepMAC":"5a:0b:2c:11:22:33"}"#
                ),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "192.168.64.3"),
                ("flannel.alpha.coreos.com/public-ipv6", "fd00:64::3"),
            ])
        );
        // IPv6 only: flanneld writes no IPv4 pair for a vxlan node without an IPv4 device.
        let v6_only = LeaseAttrs::vxlan(
            None,
            Some((
                "fd00:64::3".parse().unwrap(),
                "5a:0b:2c:11:22:33".parse().unwrap(),
            )),
            1,
            "n1",
        );
        let w = a.wanted(&v6_only, &BTreeMap::new());
        assert!(!w.contains_key(&a.public_ip) && !w.contains_key(&a.backend_data));
        assert_eq!(w[&a.public_ipv6], "fd00:64::3");
        // host-gw: the IPv6 pair with "null" data when the node has an IPv6 address.
        let gw = LeaseAttrs::host_gw(
            Some("192.168.64.3".parse().unwrap()),
            Some("fd00:64::3".parse().unwrap()),
            "n1",
        );
        let w = a.wanted(&gw, &BTreeMap::new());
        assert_eq!(w[&a.backend_v6_data], "null");
        assert_eq!(w[&a.public_ipv6], "fd00:64::3");
        let overwrite = map(&[(
            "flannel.alpha.coreos.com/public-ipv6-overwrite",
            "2001:db8::7",
        )]);
        assert_eq!(
            a.wanted(&dual_vxlan(), &overwrite)[&a.public_ipv6],
            "2001:db8::7"
        );
    }

    #[test]
    fn a_dual_stack_peer_decodes_with_both_subnets_and_round_trips() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let published = a.wanted(&dual_vxlan(), &BTreeMap::new());
        let pods = PodCidrs {
            v4: Some("10.244.2.0/24".parse().unwrap()),
            v6: Some("fd00:10:244:2::/64".parse().unwrap()),
        };
        let both = Families { v4: true, v6: true };
        let l = a.peer_lease("n1", &published, pods, both).unwrap().unwrap();
        assert_eq!(
            l.key,
            SubnetKey {
                v4: pods.v4,
                v6: pods.v6
            }
        );
        assert_eq!(l.attrs, dual_vxlan());
        // An IPv4-only network takes only the IPv4 half of the same node.
        let l = a
            .peer_lease("n1", &published, pods, Families::default())
            .unwrap()
            .unwrap();
        assert_eq!(l.key, SubnetKey::v4("10.244.2.0/24".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, None);
        // A node without an IPv6 podCIDR is no dual-stack peer; one without public-ipv6 is garbled.
        let v4_pods = v4("10.244.2.0/24".parse().unwrap());
        assert_eq!(a.peer_lease("n1", &published, v4_pods, both), Ok(None));
        let mut bad = published;
        bad.remove(&a.public_ipv6);
        let (_, e) = a.peer_lease("n1", &bad, pods, both).unwrap_err();
        assert!(e.contains("not an IPv6 address"), "{e}");
    }
}
