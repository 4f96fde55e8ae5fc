//! The plugin's keys, as the reference v1.10 reads them: `backend` (`iptables`, `firewalld`, or
//! empty for "firewalld when it runs, else iptables"; twill adds `nftables`),
//! `iptablesAdminChainName` (default `CNI-ADMIN`), `firewalldZone` (default `trusted`) and
//! `ingressPolicy` (`open`, `same-bridge`, `isolated`).

use serde::Deserialize;
use twill_cni::{Error, NetConf, Result};

pub const DEFAULT_ADMIN_CHAIN: &str = "CNI-ADMIN";
pub const DEFAULT_ZONE: &str = "trusted";
/// iptables' limit on chain names (XT_EXTENSION_MAXNAMELEN - 1).
const MAX_CHAIN_LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// No backend named: firewalld when it is running, else iptables (the reference's choice).
    Auto,
    Iptables,
    Firewalld,
    Nftables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressPolicy {
    Open,
    SameBridge,
    Isolated,
}

#[derive(Debug, Clone)]
pub struct FirewallConf {
    pub backend: Backend,
    pub admin_chain: String,
    pub zone: String,
    pub ingress_policy: IngressPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    iptables_admin_chain_name: Option<String>,
    #[serde(default)]
    firewalld_zone: Option<String>,
    #[serde(default)]
    ingress_policy: Option<String>,
}

impl FirewallConf {
    pub fn parse(conf: &NetConf) -> Result<FirewallConf> {
        let raw: Raw = conf.plugin_config()?;
        let backend = match raw.backend.as_deref().unwrap_or("") {
            "" => Backend::Auto,
            "iptables" => Backend::Iptables,
            "firewalld" => Backend::Firewalld,
            "nftables" => Backend::Nftables,
            other => {
                return Err(Error::invalid_config(format!(
                    "unknown firewall backend {other:?}: expected \"iptables\", \"firewalld\" or \"nftables\""
                )))
            }
        };
        let admin_chain = raw
            .iptables_admin_chain_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ADMIN_CHAIN.to_string());
        validate_chain(&admin_chain)?;
        let zone = raw
            .firewalld_zone
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ZONE.to_string());
        if !zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::invalid_config(format!(
                "firewalldZone {zone:?}: only letters, digits, '-', '_' and '.' are allowed"
            )));
        }
        let ingress_policy = match raw.ingress_policy.as_deref().unwrap_or("") {
            "" | "open" => IngressPolicy::Open,
            "same-bridge" => IngressPolicy::SameBridge,
            "isolated" => IngressPolicy::Isolated,
            other => {
                return Err(Error::invalid_config(format!(
                    "unknown ingress policy: {other:?}"
                )))
            }
        };
        Ok(FirewallConf {
            backend,
            admin_chain,
            zone,
            ingress_policy,
        })
    }
}

/// A chain name that iptables accepts and that cannot smuggle options into a rule line.
fn validate_chain(name: &str) -> Result<()> {
    let ok = name.len() <= MAX_CHAIN_LEN
        && !name.starts_with(['-', '!'])
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\'');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "iptablesAdminChainName {name:?}: at most {MAX_CHAIN_LEN} printable characters, no quotes, \
             not starting with '-' or '!'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(extra: serde_json::Value) -> Result<FirewallConf> {
        let mut c = json!({"cniVersion": "1.0.0", "name": "n", "type": "firewall"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        FirewallConf::parse(&NetConf::parse(c.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn defaults_are_the_references() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.backend, Backend::Auto);
        assert_eq!(c.admin_chain, "CNI-ADMIN");
        assert_eq!(c.zone, "trusted");
        assert_eq!(c.ingress_policy, IngressPolicy::Open);
    }

    #[test]
    fn bad_values_are_refused_with_code_7() {
        for bad in [
            json!({"backend": "pf"}),
            json!({"iptablesAdminChainName": "-j ACCEPT"}),
            json!({"iptablesAdminChainName": "A-VERY-LONG-CHAIN-NAME-OVER-28-CHARS"}),
            json!({"iptablesAdminChainName": "two words"}),
            json!({"ingressPolicy": "closed"}),
            json!({"firewalldZone": "a b"}),
            json!({"backend": 3}),
        ] {
            assert_eq!(parse(bad.clone()).unwrap_err().code, 7, "{bad}");
        }
    }
}
