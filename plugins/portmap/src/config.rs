//! The portmap configuration (docs/cni-spec-notes.md §12 portmap, §3.3 `portMappings` capability): the reference
//! plugin's keys with its defaults and validation, plus `backend`. Everything is validated before any rule is touched,
//! so a bad request is a code-7 error and never partial state.

use serde::Deserialize;
use std::net::IpAddr;
use twill_cni::{config::parse_value, Error, NetConf, Result};

/// The reference's default mark bit (Kubernetes uses 14 and 15, Calico 20-31).
pub const DEFAULT_MARK_BIT: u32 = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number, as matched by `meta l4proto` and ctnetlink.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One validated `runtimeConfig.portMappings` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None` for an absent, empty or unspecified (`0.0.0.0`, `::`) hostIP: every local address.
    pub host_ip: Option<IpAddr>,
}

/// What to mark for masquerading (docs/cni-spec-notes.md §12: hairpin and localhost traffic, or all with `masqAll`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkWith {
    /// Set bit `n` of the packet mark; our own postrouting rule masquerades marked packets.
    Bit(u32),
    /// iptables only: jump to an existing chain that marks (e.g. Kubernetes' KUBE-MARK-MASQ).
    ExternalChain(String),
}

#[derive(Debug, Clone)]
pub struct PortMapConf {
    pub snat: bool,
    pub masq_all: bool,
    pub mark: MarkWith,
    pub backend: Backend,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    pub mappings: Vec<PortMapping>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Raw {
    snat: Option<bool>,
    masq_all: Option<bool>,
    mark_masq_bit: Option<i64>,
    external_set_mark_chain: Option<String>,
    backend: Option<String>,
    #[serde(rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

fn parse_backend(name: Option<&str>) -> Result<Backend> {
    match name {
        None | Some("") | Some("nftables") => Ok(Backend::Nftables),
        Some("iptables") => Ok(Backend::Iptables),
        Some(other) => Err(Error::invalid_config(format!(
            "backend: unknown backend {other:?} (expected \"nftables\" or \"iptables\")"
        ))),
    }
}

/// Only the backend, for DEL and GC: they must clean up even when the rest of the configuration (or
/// the mappings libcni replays on DEL after a failed ADD) is invalid, or a runtime would retry forever.
pub fn backend_only(conf: &NetConf) -> Result<Backend> {
    #[derive(Deserialize)]
    struct OnlyBackend {
        #[serde(default)]
        backend: Option<serde_json::Value>,
    }
    let raw: OnlyBackend = conf.plugin_config()?;
    parse_backend(raw.backend.as_ref().and_then(|v| v.as_str()))
}

impl PortMapConf {
    pub fn parse(conf: &NetConf) -> Result<Self> {
        let raw: Raw = conf.plugin_config()?;
        let backend = parse_backend(raw.backend.as_deref())?;
        let mark = match (raw.mark_masq_bit, raw.external_set_mark_chain) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "cannot specify both externalSetMarkChain and markMasqBit",
                ))
            }
            (_, Some(chain)) => {
                if backend != Backend::Iptables {
                    return Err(Error::invalid_config(
                        "externalSetMarkChain is an iptables chain: it needs \"backend\": \"iptables\"",
                    ));
                }
                if chain.is_empty() || chain.len() > 28 || chain.contains(char::is_whitespace) {
                    return Err(Error::invalid_config(format!(
                        "externalSetMarkChain: invalid iptables chain name {chain:?}"
                    )));
                }
                MarkWith::ExternalChain(chain)
            }
            (Some(bit), None) => {
                if !(0..=31).contains(&bit) {
                    return Err(Error::invalid_config(format!(
                        "markMasqBit must be between 0 and 31, got {bit}"
                    )));
                }
                MarkWith::Bit(bit as u32)
            }
            (None, None) => MarkWith::Bit(DEFAULT_MARK_BIT),
        };
        let conditions_v4 = raw.conditions_v4.unwrap_or_default();
        let conditions_v6 = raw.conditions_v6.unwrap_or_default();
        if backend == Backend::Nftables && !(conditions_v4.is_empty() && conditions_v6.is_empty()) {
            // The reference's conditions are iptables match arguments; we program nftables over netlink and
            // do not parse rule text, so refuse rather than silently forward traffic they meant to exclude.
            return Err(Error::invalid_config(
                "conditionsV4/conditionsV6 are iptables match arguments: they need \"backend\": \"iptables\"",
            ));
        }
        Ok(PortMapConf {
            snat: raw.snat.unwrap_or(true),
            masq_all: raw.masq_all.unwrap_or(false),
            mark,
            backend,
            conditions_v4,
            conditions_v6,
            mappings: parse_mappings(conf)?,
        })
    }
}

/// `runtimeConfig.portMappings`; absent or `null` means no mappings.
fn parse_mappings(conf: &NetConf) -> Result<Vec<PortMapping>> {
    let Some(value) = conf.runtime_config("portMappings") else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawMapping> = parse_value(value)
        .map_err(|e| Error::invalid_config(format!("runtimeConfig.portMappings: {}", e.msg)))?;
    let mut out: Vec<PortMapping> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let at = |what: String| {
            Error::invalid_config(format!("runtimeConfig.portMappings[{i}]: {what}"))
        };
        let port = |p: i64, name: &str| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| at(format!("invalid {name} {p} (must be 1-65535)")))
        };
        let host_port = port(m.host_port, "hostPort")?;
        let container_port = port(m.container_port, "containerPort")?;
        let protocol = match m.protocol.as_deref() {
            // The CNI CONVENTIONS.md always names the protocol; runtimes that omit it mean TCP (Kubernetes' default).
            None | Some("") => Protocol::Tcp,
            Some(p) => Protocol::parse(p)
                .ok_or_else(|| at(format!("unsupported protocol {p:?} (tcp, udp or sctp)")))?,
        };
        let host_ip = match m.host_ip.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let ip: IpAddr = s.parse().map_err(|_| at(format!("invalid hostIP {s:?}")))?;
                Some(ip).filter(|ip| !ip.is_unspecified())
            }
        };
        let mapping = PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        };
        if let Some(prev) = out.iter().find(|p| p.same_host_socket(&mapping)) {
            if prev.container_port != mapping.container_port {
                return Err(at(format!(
                    "{} host port {} is mapped twice (to container ports {} and {})",
                    protocol.as_str(),
                    host_port,
                    prev.container_port,
                    container_port
                )));
            }
            continue; // an exact duplicate adds nothing
        }
        out.push(mapping);
    }
    Ok(out)
}

impl PortMapping {
    /// Same protocol, port and host address: two DNAT rules for these could not both receive traffic.
    pub fn same_host_socket(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && self.host_ip == other.host_ip
    }

    /// Whether this mapping applies to container addresses of this family: a hostIP of the other family is
    /// skipped, as the reference does.
    pub fn applies_to(&self, v6: bool) -> bool {
        self.host_ip.is_none_or(|ip| ip.is_ipv6() == v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Result<PortMapConf> {
        let c = NetConf::parse(v.to_string().as_bytes()).unwrap();
        PortMapConf::parse(&c)
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","type":"portmap"})).unwrap();
        assert!(c.snat);
        assert!(!c.masq_all);
        assert_eq!(c.mark, MarkWith::Bit(13));
        assert_eq!(c.backend, Backend::Nftables);
        assert!(c.mappings.is_empty());
    }

    #[test]
    fn mappings_are_validated_with_the_entry_named() {
        let e = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":80,"containerPort":80,"protocol":"tcp"},
            {"hostPort":0,"containerPort":80,"protocol":"tcp"}]}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("portMappings[1]"), "{}", e.msg);
        let e = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}),
        )
        .unwrap_err();
        assert!(e.msg.contains("icmp"), "{}", e.msg);
        let e = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":70000,"containerPort":80}]}}),
        )
        .unwrap_err();
        assert!(e.msg.contains("70000"), "{}", e.msg);
    }

    #[test]
    fn unspecified_host_ip_means_all_addresses() {
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":80,"containerPort":8080,"protocol":"TCP","hostIP":"0.0.0.0"},
            {"hostPort":81,"containerPort":8080,"protocol":"udp","hostIP":"10.1.2.3"}]}}),
        )
        .unwrap();
        assert_eq!(c.mappings[0].host_ip, None);
        assert_eq!(c.mappings[0].protocol, Protocol::Tcp);
        assert!(c.mappings[1].applies_to(false));
        assert!(!c.mappings[1].applies_to(true));
    }

    #[test]
    fn mark_bit_and_external_chain_are_exclusive() {
        assert!(conf(json!({"cniVersion":"1.0.0","name":"n","markMasqBit":32})).is_err());
        assert!(
            conf(json!({"cniVersion":"1.0.0","name":"n","backend":"iptables",
            "markMasqBit":14,"externalSetMarkChain":"KUBE-MARK-MASQ"}))
            .is_err()
        );
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","backend":"iptables",
            "externalSetMarkChain":"KUBE-MARK-MASQ"}))
        .unwrap();
        assert_eq!(c.mark, MarkWith::ExternalChain("KUBE-MARK-MASQ".into()));
        assert!(conf(json!({"cniVersion":"1.0.0","name":"n","backend":"bpf"})).is_err());
    }

    #[test]
    fn conflicting_duplicates_in_one_request_are_refused() {
        let e = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":80,"containerPort":80,"protocol":"tcp"},
            {"hostPort":80,"containerPort":81,"protocol":"tcp"}]}}),
        )
        .unwrap_err();
        assert!(e.msg.contains("mapped twice"), "{}", e.msg);
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":80,"containerPort":80,"protocol":"tcp"},
            {"hostPort":80,"containerPort":80,"protocol":"tcp"},
            {"hostPort":80,"containerPort":80,"protocol":"udp"}]}}),
        )
        .unwrap();
        assert_eq!(c.mappings.len(), 2);
    }
}
