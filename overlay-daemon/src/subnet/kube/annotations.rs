//! flannel's node annotations: the names under `--kube-annotation-prefix`, what this node publishes, and how a
//! peer's annotations and podCIDR become a [`Lease`]. The values are written exactly as flanneld writes them, so
//! flanneld and twilld nodes read each other: `backend-data` is the compact JSON `{"VNI":1,"VtepMAC":"..."}`,
//! `public-ip` the dotted quad, `kube-subnet-manager` the string `true`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::subnet::lease::{Lease, LeaseAttrs};

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
    /// `public-ip-overwrite` replaces the advertised address, as in flanneld).
    pub fn wanted(
        &self,
        attrs: &LeaseAttrs,
        current: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let public_ip = match current.get(&self.public_ip_overwrite).map(String::as_str) {
            Some(o) if o.parse::<Ipv4Addr>().is_ok() => o.to_string(),
            _ => attrs.public_ip.to_string(),
        };
        BTreeMap::from([
            (self.backend_type.clone(), attrs.backend_type.clone()),
            (self.backend_data.clone(), backend_data_json(attrs)),
            (self.public_ip.clone(), public_ip),
            (self.kube_managed.clone(), "true".to_string()),
        ])
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

    /// A peer node as a lease. `Ok(None)`: not a peer (no flannel-compatible daemon published it, or it has no
    /// IPv4 podCIDR yet). `Err`: it claims to be one, but its annotations cannot be used; the subnet is known.
    pub fn peer_lease(
        &self,
        node_name: &str,
        annotations: &BTreeMap<String, String>,
        pod_v4: Option<Ipv4Net>,
    ) -> Result<Option<Lease>, (Ipv4Net, String)> {
        if annotations.get(&self.kube_managed).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let Some(subnet) = pod_v4 else {
            return Ok(None);
        };
        let bad = |what: String| Err((subnet, format!("node {node_name}: {what}")));
        let ip_text = annotations
            .get(&self.public_ip)
            .map(String::as_str)
            .unwrap_or("");
        let Ok(public_ip) = ip_text.parse::<Ipv4Addr>() else {
            return bad(format!(
                "{} {ip_text:?} is not an IPv4 address",
                self.public_ip
            ));
        };
        let data_text = annotations
            .get(&self.backend_data)
            .map(String::as_str)
            .unwrap_or("null");
        let backend_data = match serde_json::from_str::<serde_json::Value>(data_text) {
            Ok(serde_json::Value::Null) => None,
            Ok(v) => Some(v),
            Err(e) => return bad(format!("{} is not JSON: {e}", self.backend_data)),
        };
        Ok(Some(Lease {
            subnet,
            attrs: LeaseAttrs {
                public_ip,
                public_ipv6: annotations.get(&self.public_ipv6).cloned(),
                backend_type: annotations
                    .get(&self.backend_type)
                    .cloned()
                    .unwrap_or_default(),
                backend_data,
                node_name: Some(node_name.to_string()),
            },
            // Nodes hold their podCIDR without expiry.
            lease_id: 0,
        }))
    }
}

/// `backend-data` as flanneld writes it: Go's compact JSON of the backend's attributes (`VNI` before
/// `VtepMAC`), or `null` for a backend without any (host-gw).
pub fn backend_data_json(attrs: &LeaseAttrs) -> String {
    match &attrs.backend_data {
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
    use crate::subnet::lease::VtepMac;

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
        let mac: VtepMac = "12:c6:65:89:b4:e3".parse().unwrap();
        let attrs = LeaseAttrs::vxlan("192.168.64.3".parse().unwrap(), 1, mac, "n1");
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
        let gw = LeaseAttrs::host_gw("192.168.64.3".parse().unwrap(), "n1");
        assert_eq!(
            a.wanted(&gw, &BTreeMap::new())["flannel.alpha.coreos.com/backend-data"],
            "null"
        );
    }

    #[test]
    fn public_ip_overwrite_replaces_the_advertised_address() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let mac: VtepMac = "12:c6:65:89:b4:e3".parse().unwrap();
        let attrs = LeaseAttrs::vxlan("10.0.0.5".parse().unwrap(), 1, mac, "n1");
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
        let mac: VtepMac = "12:c6:65:89:b4:e3".parse().unwrap();
        let attrs = LeaseAttrs::vxlan("10.0.0.5".parse().unwrap(), 1, mac, "n1");
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
            .peer_lease("w2", &flanneld, Some(subnet))
            .unwrap()
            .unwrap();
        assert_eq!(l.subnet, subnet);
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
        let ours = LeaseAttrs::vxlan(
            "192.168.64.4".parse().unwrap(),
            1,
            "12:c6:65:89:b4:e3".parse().unwrap(),
            "w2",
        );
        assert_eq!(a.wanted(&ours, &BTreeMap::new()), flanneld);
        assert_eq!(l.attrs, ours);
    }

    #[test]
    fn nodes_without_flannel_or_podcidr_are_not_peers_and_garbage_is_reported() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let subnet: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        assert_eq!(a.peer_lease("w", &BTreeMap::new(), Some(subnet)), Ok(None));
        let managed = map(&[
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "192.168.64.4"),
            ("flannel.alpha.coreos.com/backend-type", "host-gw"),
            ("flannel.alpha.coreos.com/backend-data", "null"),
        ]);
        assert_eq!(a.peer_lease("w", &managed, None), Ok(None));
        let l = a.peer_lease("w", &managed, Some(subnet)).unwrap().unwrap();
        assert_eq!(
            (l.attrs.backend_type.as_str(), l.attrs.backend_data),
            ("host-gw", None)
        );
        let mut bad = managed.clone();
        bad.insert(a.public_ip.clone(), "192.168.64".into());
        let (s, e) = a.peer_lease("w", &bad, Some(subnet)).unwrap_err();
        assert_eq!(s, subnet);
        assert!(e.contains("not an IPv4 address"), "{e}");
        let mut bad = managed;
        bad.insert(a.backend_data.clone(), "{".into());
        assert!(a
            .peer_lease("w", &bad, Some(subnet))
            .unwrap_err()
            .1
            .contains("not JSON"));
    }

    #[test]
    fn node_public_ip_annotation_is_read() {
        let a = Annotations::new("flannel.alpha.coreos.com").unwrap();
        let m = map(&[("flannel.alpha.coreos.com/node-public-ip", "192.0.2.10")]);
        assert_eq!(a.node_public_ip(&m), Some("192.0.2.10".parse().unwrap()));
        assert_eq!(a.node_public_ip(&BTreeMap::new()), None);
    }
}
