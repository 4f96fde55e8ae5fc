//! The cluster-wide network configuration stored at `<prefix>/config` (docs/architecture.md, "Network config").
//!
//! flannel parses it with Go's `encoding/json`, which matches keys case-insensitively, so `"network"`,
//! `"Network"` and `"NETWORK"` (and `"VNI"` / `"vni"` in the backend object) are all accepted; we fold keys to
//! lower case before reading them to stay config-compatible (docs/architecture.md, "Network config").

use std::collections::BTreeMap;
use std::fmt;

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::family::Family;
use crate::subnet::lease::SubnetKey;

/// Kernel default VXLAN port used by flannel when `Backend.Port` is 0 or absent (docs/architecture.md, "Network
/// config").
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`; `None` with `EnableIPv4: false`.
    pub v4: Option<Pool<Ipv4Net>>,
    /// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`; `Some` with `EnableIPv6: true`.
    pub v6: Option<Pool<Ipv6Net>>,
    /// Which data path: `Backend.Type`.
    pub kind: BackendKind,
    /// The VXLAN options (defaults for other backend types, which take no options).
    pub backend: VxlanBackend,
    /// `EnableNFTables` from the config; the daemon flag can also select nftables.
    pub enable_nftables: bool,
}

/// One family's pod network and how it is cut into node subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool<N: Family> {
    pub network: N,
    pub subnet_len: u8,
    /// The first and last node subnet that may be handed out.
    pub subnet_min: N::Addr,
    pub subnet_max: N::Addr,
}

impl<N: Family> Pool<N> {
    /// Whether `subnet` may be held under this config: right length, aligned, within [min, max]
    /// (docs/architecture.md, "Subnet acquisition").
    pub fn allows(&self, subnet: N) -> bool {
        let start = subnet.network_bits();
        subnet.prefix() == self.subnet_len
            && N::addr_bits(subnet.network_addr()) == start
            && start >= N::addr_bits(self.subnet_min)
            && start <= N::addr_bits(self.subnet_max)
    }

    /// All candidate subnets in allocation order, lazily.
    pub fn subnets(&self) -> impl Iterator<Item = N> + '_ {
        let step = 1u128 << (N::BITS - self.subnet_len);
        let min = N::addr_bits(self.subnet_min);
        let max = N::addr_bits(self.subnet_max);
        let mut next = Some(min);
        std::iter::from_fn(move || {
            let cur = next.filter(|c| *c <= max)?;
            next = cur.checked_add(step);
            N::from_bits(cur, self.subnet_len)
        })
    }
}

/// How one family's keys are named and defaulted (flannel's `CheckNetworkConfig`).
struct PoolRules {
    /// Lower-case keys, then the names used in messages.
    keys: [&'static str; 4],
    names: [&'static str; 4],
    /// The longest network prefix that still gives four subnets of the smallest size.
    max_network_prefix: u8,
    /// The longest subnet prefix allowed.
    max_subnet_len: u8,
    /// The default subnet length for networks of at most `default_len - 2` bits of prefix.
    default_len: u8,
}

const V4_RULES: PoolRules = PoolRules {
    keys: ["network", "subnetlen", "subnetmin", "subnetmax"],
    names: ["Network", "SubnetLen", "SubnetMin", "SubnetMax"],
    max_network_prefix: 28,
    max_subnet_len: 30,
    default_len: 24,
};

const V6_RULES: PoolRules = PoolRules {
    keys: [
        "ipv6network",
        "ipv6subnetlen",
        "ipv6subnetmin",
        "ipv6subnetmax",
    ],
    names: [
        "IPv6Network",
        "IPv6SubnetLen",
        "IPv6SubnetMin",
        "IPv6SubnetMax",
    ],
    max_network_prefix: 124,
    max_subnet_len: 126,
    default_len: 64,
};

/// Parses and validates one family's pool.
fn parse_pool<N>(top: &Folded, r: &PoolRules) -> Result<Pool<N>, ConfigError>
where
    N: Family + std::str::FromStr,
    N::Addr: std::str::FromStr,
{
    let [k_net, k_len, k_min, k_max] = r.keys;
    let [n_net, n_len, n_min, n_max] = r.names;
    let network_text = top
        .string(k_net, n_net)?
        .ok_or_else(|| ConfigError(format!("{n_net} is missing")))?;
    let network: N = network_text.parse().map_err(|_| {
        ConfigError(format!(
            "{n_net} {network_text:?} is not an {} CIDR",
            N::NAME
        ))
    })?;
    // Go's ParseCIDR masks host bits: "10.244.1.0/16" means 10.244.0.0/16.
    let network = N::from_bits(network.network_bits(), network.prefix())
        .ok_or_else(|| ConfigError(format!("{n_net} {network_text:?} is not a CIDR")))?;
    let prefix = network.prefix();
    if prefix > r.max_network_prefix {
        return err(format!(
            "{n_net} {network} is too small: the prefix must be /{} or shorter",
            r.max_network_prefix
        ));
    }
    let subnet_len = match top.uint(k_len, n_len, u64::from(N::BITS))? {
        // flannel: 0 means "not given".
        None | Some(0) if prefix + 2 <= r.default_len => r.default_len,
        None | Some(0) => prefix + 2,
        Some(n) => {
            let n = n as u8;
            if n > r.max_subnet_len {
                return err(format!(
                    "{n_len} {n} is out of range: it must be at most {}",
                    r.max_subnet_len
                ));
            }
            if n < prefix + 2 {
                return err(format!(
                    "{n_len} {n} is out of range: it must be at least the {n_net} prefix + 2 ({})",
                    prefix + 2
                ));
            }
            n
        }
    };
    let step = 1u128 << (N::BITS - subnet_len);
    let first = network.network_bits();
    let host_bits = N::BITS - prefix;
    let span = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let last = first + span - (step - 1);
    let bound = |key: &str, display: &str, default: u128| -> Result<N::Addr, ConfigError> {
        let Some(text) = top.string(key, display)? else {
            return Ok(N::addr_from_bits(default));
        };
        let addr: N::Addr = text.parse().map_err(|_| {
            ConfigError(format!("{display} {text:?} is not an {} address", N::NAME))
        })?;
        let bits = N::addr_bits(addr);
        if !N::from_bits(bits, N::BITS).is_some_and(|a| network.contains_net(&a)) {
            return err(format!("{display} {addr} is outside {n_net} {network}"));
        }
        if bits % step != 0 {
            return err(format!(
                "{display} {addr} is not aligned to {n_len} /{subnet_len}"
            ));
        }
        Ok(addr)
    };
    // The first subnet holds the network address and is skipped by default (docs/architecture.md, "Network
    // config").
    let subnet_min = bound(k_min, n_min, first + step)?;
    let subnet_max = bound(k_max, n_max, last)?;
    if N::addr_bits(subnet_min) > N::addr_bits(subnet_max) {
        return err(format!(
            "{n_min} {subnet_min} is above {n_max} {subnet_max}"
        ));
    }
    Ok(Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
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

        let enable_v4 = top.bool("enableipv4", "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = top.bool("enableipv6", "EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return err(
                "EnableIPv4 and EnableIPv6 are both false: at least one family must be enabled",
            );
        }
        let v4 = if enable_v4 {
            Some(parse_pool::<Ipv4Net>(&top, &V4_RULES)?)
        } else {
            None
        };
        let v6 = if enable_v6 {
            Some(parse_pool::<Ipv6Net>(&top, &V6_RULES)?)
        } else {
            None
        };
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
            v4,
            v6,
            kind,
            backend,
            enable_nftables: top
                .bool("enablenftables", "EnableNFTables")?
                .unwrap_or(false),
        })
    }

    /// Whether `key` may be held under this config: a subnet of each enabled family, none of another, each
    /// allowed by its pool.
    pub fn allows(&self, key: &SubnetKey) -> bool {
        fn fits<N: Family>(pool: &Option<Pool<N>>, s: Option<N>) -> bool {
            match (pool, s) {
                (Some(p), Some(s)) => p.allows(s),
                (None, None) => true,
                _ => false,
            }
        }
        fits(&self.v4, key.v4) && fits(&self.v6, key.v6)
    }

    /// The IPv4 pool; `EnableIPv4: false` leaves none.
    pub fn v4_network(&self) -> Option<Ipv4Net> {
        self.v4.map(|p| p.network)
    }

    pub fn v6_network(&self) -> Option<Ipv6Net> {
        self.v6.map(|p| p.network)
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
        let v4 = c.v4.unwrap();
        assert_eq!(v4.network.to_string(), "10.244.0.0/16");
        assert_eq!(v4.subnet_len, 24);
        assert_eq!(v4.subnet_min.to_string(), "10.244.1.0");
        assert_eq!(v4.subnet_max.to_string(), "10.244.255.0");
        assert_eq!(c.v6, None);
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
        let v4 = c.v4.unwrap();
        assert_eq!(v4.subnet_len, 28);
        assert_eq!(v4.subnets().count(), 3);
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
        let v4 = c.v4.unwrap();
        assert!(v4.allows("10.244.10.0/24".parse().unwrap()));
        assert!(!v4.allows("10.244.9.0/24".parse().unwrap()));
        assert!(!v4.allows("10.244.21.0/24".parse().unwrap()));
        assert!(!v4.allows("10.244.12.0/25".parse().unwrap()));
        assert_eq!(v4.subnets().count(), 11);
        assert!(c.allows(&SubnetKey::v4("10.244.10.0/24".parse().unwrap())));
        let dual = SubnetKey {
            v4: Some("10.244.10.0/24".parse().unwrap()),
            v6: Some("fd00::/64".parse().unwrap()),
        };
        assert!(!c.allows(&dual), "a v6 part on a v4-only network");
    }

    const DUAL: &str =
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56"}"#;

    #[test]
    fn dual_stack_takes_flannels_v6_keys_and_defaults() {
        let c = NetworkConfig::parse(DUAL).unwrap();
        let v6 = c.v6.unwrap();
        assert_eq!(v6.network.to_string(), "fd00:42::/56");
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min.to_string(), "fd00:42:0:1::");
        assert_eq!(v6.subnet_max.to_string(), "fd00:42:0:ff::");
        assert_eq!(v6.subnets().count(), 255);
        assert!(c.v4.is_some());
        let key = SubnetKey {
            v4: Some("10.244.3.0/24".parse().unwrap()),
            v6: Some("fd00:42:0:7::/64".parse().unwrap()),
        };
        assert!(c.allows(&key));
        assert!(!c.allows(&SubnetKey::v4("10.244.3.0/24".parse().unwrap())));

        let small = NetworkConfig::parse(
            r#"{"enableipv4":false,"enableipv6":true,"ipv6network":"fd00::/120","IPv6SubnetMin":"fd00::40","ipv6SubnetMax":"fd00::80"}"#,
        )
        .unwrap();
        assert_eq!(small.v4, None);
        let v6 = small.v6.unwrap();
        assert_eq!(v6.subnet_len, 122);
        let all: Vec<String> = v6.subnets().map(|s| s.to_string()).collect();
        assert_eq!(all, ["fd00::40/122", "fd00::80/122"]);
        let wide = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0","IPv6SubnetLen":64}"#,
        )
        .unwrap();
        assert_eq!(wide.v6.unwrap().subnet_min.to_string(), "0:0:0:1::");
    }

    /// Every key a dual-stack or IPv6-only config adds, invalid in turn: each is refused with a message
    /// naming the key.
    #[test]
    fn invalid_dual_stack_keys_are_rejected_with_a_reason() {
        let v6 = |extra: &str| {
            format!(
                r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56"{extra}}}"#
            )
        };
        for (text, needle) in [
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes"}"#.to_string(),
                "EnableIPv6 must be true or false",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":1}"#.to_string(),
                "EnableIPv4 must be true or false",
            ),
            (r#"{"EnableIPv4":false}"#.to_string(), "both false"),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#.to_string(),
                "IPv6Network is missing",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true}"#.to_string(),
                "IPv6Network is missing",
            ),
            (
                v6(r#","IPv6Network":"10.1.0.0/16""#)
                    .replace(r#""IPv6Network":"fd00:42::/56","#, ""),
                "not an IPv6 CIDR",
            ),
            (
                v6("").replace("fd00:42::/56", "fd00::/125"),
                "IPv6Network fd00::/125 is too small",
            ),
            (v6("").replace("fd00:42::/56", "banana"), "not an IPv6 CIDR"),
            (v6(r#","IPv6SubnetLen":127"#), "IPv6SubnetLen 127"),
            (v6(r#","IPv6SubnetLen":57"#), "IPv6SubnetLen 57"),
            (
                v6(r#","IPv6SubnetLen":"64""#),
                "IPv6SubnetLen must be an integer",
            ),
            (
                v6(r#","IPv6SubnetMin":"fd00:43::""#),
                "IPv6SubnetMin fd00:43:: is outside IPv6Network",
            ),
            (
                v6(r#","IPv6SubnetMin":"10.0.0.1""#),
                "IPv6SubnetMin \"10.0.0.1\" is not an IPv6 address",
            ),
            (
                v6(r#","IPv6SubnetMax":"fd00:42:0:3::1""#),
                "IPv6SubnetMax fd00:42:0:3::1 is not aligned",
            ),
            (
                v6(r#","IPv6SubnetMin":"fd00:42:0:9::","IPv6SubnetMax":"fd00:42:0:3::""#),
                "above IPv6SubnetMax",
            ),
            (v6(r#","ipv6network":"fd00:43::/56""#), "given twice"),
        ] {
            let e = NetworkConfig::parse(&text).expect_err(&text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // IPv6-only ignores the IPv4 keys, as flannel does.
        assert!(NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","SubnetLen":3}"#
        )
        .is_ok());
    }
}
