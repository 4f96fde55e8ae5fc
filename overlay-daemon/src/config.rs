//! The cluster-wide network configuration stored at `<prefix>/config` (docs/architecture.md, "Network config").
//!
//! flannel parses it with Go's `encoding/json`, which matches keys case-insensitively, so `"network"`,
//! `"Network"` and `"NETWORK"` (and `"VNI"` / `"vni"` in the backend object) are all accepted; we fold keys to
//! lower case before reading them to stay config-compatible (docs/architecture.md, "Network config").

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

/// Kernel default VXLAN port used by flannel when `Backend.Port` is 0 or absent (docs/architecture.md, "Network
/// config").
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    /// Which data path: `Backend.Type`.
    pub kind: BackendKind,
    /// The VXLAN options (defaults for other backend types, which take no options).
    pub backend: VxlanBackend,
    /// `EnableNFTables` from the config; the daemon flag can also select nftables.
    pub enable_nftables: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Vxlan,
    /// Routes via the peers' public IPs over the underlay, no encapsulation.
    HostGw,
}

impl BackendKind {
    /// The `BackendType` of this backend's leases, as flanneld writes it.
    pub fn lease_type(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanBackend {
    pub vni: u32,
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Desired outer MTU; the device gets `mtu - 50` (docs/architecture.md, "VXLAN programming"). `None` = underlay
    /// MTU.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid network config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A JSON object whose keys were folded to lower case.
struct Folded(BTreeMap<String, Value>);

impl Folded {
    fn new(v: &Value, what: &str) -> Result<Self, ConfigError> {
        let Value::Object(map) = v else {
            return err(format!("{what} must be a JSON object"));
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            if out.insert(k.to_ascii_lowercase(), v.clone()).is_some() {
                return err(format!(
                    "{what}: key {k:?} given twice (keys are case-insensitive)"
                ));
            }
        }
        Ok(Folded(out))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str, display: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => err(format!("{display} must be a string, got {other}")),
        }
    }

    fn bool(&self, key: &str, display: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => err(format!("{display} must be true or false, got {other}")),
        }
    }

    fn uint(&self, key: &str, display: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => err(format!(
                    "{display} must be an integer between 0 and {max}, got {v}"
                )),
            },
        }
    }
}

impl NetworkConfig {
    /// Parses and validates the config (flannel's `CheckNetworkConfig`, docs/architecture.md, "Network config").
    /// Every rule is checked before anything is written to etcd or the kernel, so an invalid config leaves both
    /// untouched.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError(format!("not valid JSON: {e}")))?;
        let top = Folded::new(&value, "network config")?;

        if top.bool("enableipv6", "EnableIPv6")? == Some(true) {
            return err("EnableIPv6 is not supported by twilld (IPv4 overlay only)");
        }
        if top.bool("enableipv4", "EnableIPv4")? == Some(false) {
            return err("EnableIPv4=false is not supported by twilld (IPv4 overlay only)");
        }
        let network_text = top
            .string("network", "Network")?
            .ok_or_else(|| ConfigError("Network is missing".into()))?;
        let network: Ipv4Net = network_text
            .parse()
            .map_err(|_| ConfigError(format!("Network {network_text:?} is not an IPv4 CIDR")))?;
        // Go's ParseCIDR masks host bits: "10.244.1.0/16" means 10.244.0.0/16.
        let network = network.trunc();
        if network.prefix_len() > 28 {
            return err(format!(
                "Network {network} is too small: the prefix must be /28 or shorter"
            ));
        }

        let subnet_len = match top.uint("subnetlen", "SubnetLen", 32)? {
            None if network.prefix_len() <= 22 => 24,
            None => network.prefix_len() + 2,
            Some(n) => {
                let n = n as u8;
                if n > 30 {
                    return err(format!(
                        "SubnetLen {n} is out of range: it must be at most 30"
                    ));
                }
                if n < network.prefix_len() + 2 {
                    return err(format!(
                        "SubnetLen {n} is out of range: it must be at least the Network prefix + 2 ({})",
                        network.prefix_len() + 2
                    ));
                }
                n
            }
        };
        let step = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast()) - (step - 1);
        let bound = |key: &str, display: &str, default: u32| -> Result<Ipv4Addr, ConfigError> {
            let Some(text) = top.string(key, display)? else {
                return Ok(Ipv4Addr::from(default));
            };
            let addr: Ipv4Addr = text
                .parse()
                .map_err(|_| ConfigError(format!("{display} {text:?} is not an IPv4 address")))?;
            if !network.contains(&addr) {
                return err(format!("{display} {addr} is outside Network {network}"));
            }
            if u32::from(addr) % step != 0 {
                return err(format!(
                    "{display} {addr} is not aligned to SubnetLen /{subnet_len}"
                ));
            }
            Ok(addr)
        };
        // The first subnet holds the network address and is skipped by default (docs/architecture.md, "Network
        // config").
        let subnet_min = bound("subnetmin", "SubnetMin", first + step)?;
        let subnet_max = bound("subnetmax", "SubnetMax", last)?;
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return err(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
            ));
        }

        let (kind, backend) = match top.get("backend") {
            None => (BackendKind::Vxlan, VxlanBackend::default()),
            Some(v) => {
                let b = Folded::new(v, "Backend")?;
                // flannel lower-cases the type before looking it up (docs/architecture.md, "Network config"). A
                // missing type is vxlan: the documented intent, rather than flannel's accidental "udp".
                match b.string("type", "Backend.Type")?.map(str::to_ascii_lowercase) {
                    None => (BackendKind::Vxlan, VxlanBackend::parse(&b)?),
                    Some(t) if t == "vxlan" => (BackendKind::Vxlan, VxlanBackend::parse(&b)?),
                    // host-gw takes no options; flanneld ignores any other key there, and so do we.
                    Some(t) if t == "host-gw" => (BackendKind::HostGw, VxlanBackend::default()),
                    Some(t) => {
                        return err(format!(
                            "unknown or unsupported backend type {t:?}: twilld supports \"vxlan\" and \"host-gw\""
                        ))
                    }
                }
            }
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            kind,
            backend,
            enable_nftables: top
                .bool("enablenftables", "EnableNFTables")?
                .unwrap_or(false),
        })
    }

    /// Whether `subnet` may be held under this config: right length, aligned, within [SubnetMin, SubnetMax]
    /// (docs/architecture.md, "Subnet acquisition").
    pub fn allows(&self, subnet: Ipv4Net) -> bool {
        let start = u32::from(subnet.network());
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && start >= u32::from(self.subnet_min)
            && start <= u32::from(self.subnet_max)
    }

    /// All candidate subnets in allocation order, lazily.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - self.subnet_len);
        let min = u64::from(u32::from(self.subnet_min));
        let max = u64::from(u32::from(self.subnet_max));
        (min..=max)
            .step_by(step as usize)
            .filter_map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).ok())
    }
}

impl Default for VxlanBackend {
    fn default() -> Self {
        VxlanBackend {
            vni: 1,
            port: DEFAULT_VXLAN_PORT,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
        }
    }
}

impl VxlanBackend {
    fn parse(b: &Folded) -> Result<Self, ConfigError> {
        let vni = b.uint("vni", "Backend.VNI", (1 << 24) - 1)?.unwrap_or(1) as u32;
        let port = match b.uint("port", "Backend.Port", u64::from(u16::MAX))? {
            None | Some(0) => DEFAULT_VXLAN_PORT,
            Some(p) => p as u16,
        };
        let mtu = match b.uint("mtu", "Backend.MTU", 65535)? {
            None | Some(0) => None,
            Some(m) if m < 68 + 50 => {
                return err(format!(
                    "Backend.MTU {m} is too small: at least 118 is needed"
                ))
            }
            Some(m) => Some(m as u32),
        };
        Ok(VxlanBackend {
            vni,
            port,
            gbp: b.bool("gbp", "Backend.GBP")?.unwrap_or(false),
            learning: b.bool("learning", "Backend.Learning")?.unwrap_or(false),
            direct_routing: b
                .bool("directrouting", "Backend.DirectRouting")?
                .unwrap_or(false),
            mtu,
        })
    }

    /// `flannel.<VNI>` (docs/architecture.md, "VXLAN programming").
    pub fn device_name(&self) -> String {
        format!("flannel.{}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_backend_defaults_to_vxlan() {
        let c = NetworkConfig::parse(r#"{"network":"10.244.0.0/16","BACKEND":{"type":"VXLAN","VNI":4,"directRouting":true}}"#)
            .unwrap();
        assert_eq!(c.network.to_string(), "10.244.0.0/16");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, "10.244.1.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.subnet_max, "10.244.255.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.backend.vni, 4);
        assert!(c.backend.direct_routing);
        assert_eq!(c.backend.port, 8472);
        let d = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        assert_eq!(d.backend, VxlanBackend::default());
        assert_eq!(d.kind, BackendKind::Vxlan);
    }

    #[test]
    fn host_gw_is_a_backend_type_of_its_own() {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"Host-GW"}}"#)
            .unwrap();
        assert_eq!(c.kind, BackendKind::HostGw);
        assert_eq!(c.kind.lease_type(), "host-gw");
    }

    #[test]
    fn default_subnet_len_for_small_networks_is_prefix_plus_two() {
        let c = NetworkConfig::parse(r#"{"Network":"10.0.0.0/26"}"#).unwrap();
        assert_eq!(c.subnet_len, 28);
        assert_eq!(c.subnets().count(), 3);
    }

    #[test]
    fn invalid_configs_are_rejected_with_a_reason() {
        for (text, needle) in [
            (r#"{"Network":"10.244.0.0/33"}"#, "not an IPv4 CIDR"),
            (r#"{"Network":"banana"}"#, "not an IPv4 CIDR"),
            (r#"{}"#, "Network is missing"),
            (r#"{"Network":"10.0.0.0/29"}"#, "too small"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
                "SubnetLen 31",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#,
                "SubnetLen 17",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.1.0"}"#,
                "outside Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}"#,
                "not aligned",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
                "above SubnetMax",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
                "backend type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"VNI":"one"}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","network":"10.1.0.0/16"}"#,
                "given twice",
            ),
            ("not json", "not valid JSON"),
        ] {
            let e = NetworkConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn allows_checks_range_and_alignment() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}"#,
        )
        .unwrap();
        assert!(c.allows("10.244.10.0/24".parse().unwrap()));
        assert!(!c.allows("10.244.9.0/24".parse().unwrap()));
        assert!(!c.allows("10.244.21.0/24".parse().unwrap()));
        assert!(!c.allows("10.244.12.0/25".parse().unwrap()));
        assert_eq!(c.subnets().count(), 11);
    }
}
