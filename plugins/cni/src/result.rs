//! Results: the 1.x model, its exact rendering in every older version, and reading a result of any version
//! (docs/cni-spec-notes.md §5; conversion rules §5.2).

use crate::error::{Error, Result};
use crate::version::Version;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(rename = "advmss", default, skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A success result in the current (1.1) model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn family(a: &IpNet) -> &'static str {
    match a {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    // Serialising these plain structs cannot fail; fall back to null rather than panic.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

impl CniResult {
    /// Render in `version`. The reference prints `"dns": {}` even when empty, and so do we: runtimes compare
    /// cached results and some tooling diffs them.
    pub fn to_json(&self, version: Version) -> Value {
        if !version.has_rich_result() {
            return self.to_json_020(version);
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    if version >= Version::V1_0_0 {
                        to_value(i)
                    } else {
                        // 0.3.x/0.4.0 interfaces carry only name, mac and sandbox.
                        let trimmed = Interface {
                            name: i.name.clone(),
                            mac: i.mac.clone(),
                            sandbox: i.sandbox.clone(),
                            ..Default::default()
                        };
                        to_value(&trimmed)
                    }
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = to_value(ip);
                    if version.has_ip_version_field() {
                        v["version"] = json!(family(&ip.address));
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), to_value(&self.routes));
        }
        out.insert("dns".into(), to_value(&self.dns));
        Value::Object(out)
    }

    /// 0.1.0/0.2.0: only the first address of each family, routes sorted into `ip4`/`ip6` by destination family.
    fn to_json_020(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) else {
                continue;
            };
            let mut cfg = Map::new();
            cfg.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                cfg.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == v4)
                .map(|r| {
                    let mut rv = json!({"dst": r.dst.to_string()});
                    if let Some(gw) = r.gw {
                        rv["gw"] = json!(gw.to_string());
                    }
                    rv
                })
                .collect();
            if !routes.is_empty() {
                cfg.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(cfg));
        }
        out.insert("dns".into(), to_value(&self.dns));
        Value::Object(out)
    }

    /// Read a result of any version. Its own `cniVersion` wins; `fallback` applies when it has none (libcni
    /// injects the config's version into a `prevResult` that lacks one).
    pub fn from_json(v: &Value, fallback: Version) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::decoding("result is not a JSON object"))?;
        let version = match obj.get("cniVersion").and_then(Value::as_str) {
            Some(s) => Version::parse(s)?,
            None => fallback,
        };
        let bad = |what: &str, e: serde_json::Error| {
            Error::decoding(format!("failed to parse result {what}: {e}"))
        };
        if !version.has_rich_result() {
            return Self::from_json_020(obj);
        }
        let mut r = CniResult::default();
        if let Some(ifs) = obj.get("interfaces").filter(|x| !x.is_null()) {
            r.interfaces = serde_json::from_value(ifs.clone()).map_err(|e| bad("interfaces", e))?;
        }
        if let Some(ips) = obj.get("ips").filter(|x| !x.is_null()) {
            // `version` (0.3.x/0.4.0) is implied by the address and dropped on up-conversion.
            let mut ips = ips.clone();
            if let Some(list) = ips.as_array_mut() {
                for ip in list.iter_mut().filter_map(Value::as_object_mut) {
                    ip.remove("version");
                }
            }
            r.ips = serde_json::from_value(ips).map_err(|e| bad("ips", e))?;
        }
        if let Some(routes) = obj.get("routes").filter(|x| !x.is_null()) {
            r.routes = serde_json::from_value(routes.clone()).map_err(|e| bad("routes", e))?;
        }
        if let Some(dns) = obj.get("dns").filter(|x| !x.is_null()) {
            r.dns = serde_json::from_value(dns.clone()).map_err(|e| bad("dns", e))?;
        }
        Ok(r)
    }

    fn from_json_020(obj: &Map<String, Value>) -> Result<Self> {
        #[derive(Deserialize)]
        struct IpCfg020 {
            ip: IpNet,
            #[serde(default)]
            gateway: Option<IpAddr>,
            #[serde(default)]
            routes: Vec<Route>,
        }
        let mut r = CniResult::default();
        for key in ["ip4", "ip6"] {
            let Some(v) = obj.get(key).filter(|x| !x.is_null()) else {
                continue;
            };
            let cfg: IpCfg020 = serde_json::from_value(v.clone())
                .map_err(|e| Error::decoding(format!("failed to parse result {key}: {e}")))?;
            r.ips.push(IpConfig {
                interface: None,
                address: cfg.ip,
                gateway: cfg.gateway,
            });
            r.routes.extend(cfg.routes);
        }
        if let Some(dns) = obj.get("dns").filter(|x| !x.is_null()) {
            r.dns = serde_json::from_value(dns.clone())
                .map_err(|e| Error::decoding(format!("failed to parse result dns: {e}")))?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("aa:bb:cc:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:00:00:03".into()),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: "10.244.1.7/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(1),
                    address: "fd00::7/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.244.1.1".parse().unwrap()),
            )],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v040_adds_ip_version_and_drops_interface_mtu() {
        let v = sample().to_json(Version::V0_4_0);
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn v100_keeps_mtu_and_has_no_ip_version() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
    }

    #[test]
    fn v020_has_ip4_and_ip6() {
        let v = sample().to_json(Version::V0_2_0);
        assert_eq!(v["ip4"]["ip"], "10.244.1.7/24");
        assert_eq!(v["ip4"]["gateway"], "10.244.1.1");
        assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["ip6"]["ip"], "fd00::7/64");
        assert!(v.get("interfaces").is_none());
    }

    #[test]
    fn empty_dns_is_rendered_like_the_reference() {
        let v = CniResult::default().to_json(Version::V1_0_0);
        assert_eq!(v, json!({"cniVersion": "1.0.0", "dns": {}}));
    }

    #[test]
    fn missing_version_falls_back() {
        let r =
            CniResult::from_json(&json!({"ip4": {"ip": "10.0.0.2/24"}}), Version::V0_2_0).unwrap();
        assert_eq!(r.ips[0].address, "10.0.0.2/24".parse::<IpNet>().unwrap());
    }

    #[test]
    fn garbage_result_is_a_decoding_error() {
        assert_eq!(
            CniResult::from_json(&json!({"cniVersion": "1.0.0", "ips": "x"}), Version::V1_0_0)
                .unwrap_err()
                .code,
            6
        );
    }

    fn arb_ipnet() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(
                IpAddr::V4(Ipv4Addr::from(a)),
                p
            )
            .unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                p
            )
            .unwrap()),
        ]
    }

    fn arb_result() -> impl Strategy<Value = CniResult> {
        let iface = (
            "[a-z][a-z0-9]{0,14}",
            proptest::option::of("[0-9a-f:]{17}"),
            proptest::option::of(any::<u32>()),
            proptest::option::of("/run/netns/[a-z]{1,8}"),
        )
            .prop_map(|(name, mac, mtu, sandbox)| Interface {
                name,
                mac,
                mtu,
                sandbox,
                ..Default::default()
            });
        let ip = (
            arb_ipnet(),
            proptest::option::of(0usize..4),
            proptest::option::of(arb_ipnet().prop_map(|n| n.addr())),
        )
            .prop_map(|(address, interface, gateway)| IpConfig {
                interface,
                address,
                gateway,
            });
        let route = (
            arb_ipnet(),
            proptest::option::of(arb_ipnet().prop_map(|n| n.addr())),
            proptest::option::of(any::<u32>()),
            proptest::option::of(0u8..=254),
        )
            .prop_map(|(dst, gw, priority, scope)| Route {
                priority,
                scope,
                ..Route::new(dst, gw)
            });
        let dns = (
            proptest::collection::vec("[0-9.]{1,15}", 0..3),
            proptest::option::of("[a-z.]{1,10}"),
            proptest::collection::vec("[a-z.]{1,10}", 0..3),
        )
            .prop_map(|(nameservers, domain, search)| Dns {
                nameservers,
                domain,
                search,
                options: vec![],
            });
        (
            proptest::collection::vec(iface, 0..4),
            proptest::collection::vec(ip, 0..4),
            proptest::collection::vec(route, 0..4),
            dns,
        )
            .prop_map(|(interfaces, ips, routes, dns)| CniResult {
                interfaces,
                ips,
                routes,
                dns,
            })
    }

    proptest! {
        #[test]
        fn rich_versions_round_trip(r in arb_result()) {
            for v in [Version::V1_1_0, Version::V1_0_0] {
                prop_assert_eq!(&CniResult::from_json(&r.to_json(v), v).unwrap(), &r);
            }
            // 0.3.x/0.4.0 lose only the 1.1 interface fields.
            let mut trimmed = r.clone();
            for i in &mut trimmed.interfaces { i.mtu = None; }
            for v in [Version::V0_4_0, Version::V0_3_1, Version::V0_3_0] {
                prop_assert_eq!(&CniResult::from_json(&r.to_json(v), v).unwrap(), &trimmed);
            }
        }

        #[test]
        fn v020_round_trip_keeps_first_address_per_family(r in arb_result()) {
            let back = CniResult::from_json(&r.to_json(Version::V0_2_0), Version::V0_2_0).unwrap();
            let firsts: Vec<IpNet> = [true, false].iter()
                .filter_map(|v4| r.ips.iter().find(|i| i.address.addr().is_ipv4() == *v4).map(|i| i.address))
                .collect();
            prop_assert_eq!(back.ips.iter().map(|i| i.address).collect::<Vec<_>>(), firsts);
            // Routes survive only under a family that has an address (they live inside `ip4`/`ip6`).
            let kept = r.routes.iter()
                .filter(|rt| r.ips.iter().any(|i| i.address.addr().is_ipv4() == rt.dst.addr().is_ipv4()))
                .count();
            prop_assert_eq!(back.routes.len(), kept);
            prop_assert_eq!(back.dns, r.dns);
        }
    }
}
