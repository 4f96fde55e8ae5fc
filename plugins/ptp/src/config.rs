//! The ptp plugin's configuration: every key of the reference (`ipMasq`, `ipMasqBackend`, `mtu`, `dns`,
//! `ipam`), validated before anything is touched.

use serde::Deserialize;
use twill_cni::{Dns, Error, Request, Result};

pub use twill_firewall::masquerade::Backend as MasqBackend;

/// The validated configuration of one request.
#[derive(Debug, Clone)]
pub struct PtpConf {
    pub ip_masq: bool,
    pub masq_backend: MasqBackend,
    /// `None` = kernel default (the reference's 0).
    pub mtu: Option<u32>,
    /// `ipam.type`; ptp cannot work without addresses, so ADD requires it.
    pub ipam_type: Option<String>,
    /// The `dns` key when any of its fields is set: it replaces IPAM's DNS in the result.
    pub dns: Option<Dns>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: i64,
    #[serde(default)]
    dns: Option<Dns>,
}

impl PtpConf {
    pub fn load(req: &Request) -> Result<PtpConf> {
        let raw: Raw = req.config.plugin_config()?;
        if !(0..=i64::from(u32::MAX)).contains(&raw.mtu) {
            return Err(Error::invalid_config(format!("invalid mtu {}", raw.mtu)));
        }
        // An empty string is "unset", as the reference reads it.
        let masq_backend =
            MasqBackend::from_config(raw.ip_masq_backend.as_deref().filter(|b| !b.is_empty()))
                .map_err(|e| Error::invalid_config(e.to_string()))?;
        Ok(PtpConf {
            ip_masq: raw.ip_masq,
            masq_backend,
            mtu: (raw.mtu > 0).then_some(raw.mtu as u32),
            ipam_type: req.config.ipam_type().map(str::to_string),
            dns: raw.dns.filter(|d| !d.is_empty()),
        })
    }

    /// The IPAM type, for the verbs that cannot do without one.
    pub fn require_ipam(&self) -> Result<&str> {
        self.ipam_type
            .as_deref()
            .ok_or_else(|| Error::invalid_config("ptp requires an IPAM plugin (ipam.type)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_cni::Command;

    fn load(config: &str) -> Result<PtpConf> {
        PtpConf::load(&twill_cni::testing::request(Command::Add, config, ""))
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = load(r#"{"cniVersion":"1.0.0","name":"n","type":"ptp"}"#).unwrap();
        assert!(!c.ip_masq);
        assert_eq!(c.mtu, None);
        assert_eq!(c.masq_backend, MasqBackend::Nftables);
        assert!(c.require_ipam().is_err());
        assert!(c.dns.is_none());
    }

    #[test]
    fn keys_are_read() {
        let c = load(
            r#"{"name":"n","ipMasq":true,"ipMasqBackend":"iptables","mtu":1400,
                "dns":{"nameservers":["10.0.0.10"]},"ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert!(c.ip_masq);
        assert_eq!(c.masq_backend, MasqBackend::Iptables);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.require_ipam().unwrap(), "host-local");
        assert_eq!(c.dns.unwrap().nameservers, vec!["10.0.0.10"]);
    }

    #[test]
    fn bad_values_are_config_errors() {
        for bad in [
            r#"{"name":"n","mtu":-1}"#,
            r#"{"name":"n","mtu":"big"}"#,
            r#"{"name":"n","ipMasq":"yes"}"#,
            r#"{"name":"n","ipMasqBackend":"pf"}"#,
        ] {
            assert_eq!(load(bad).unwrap_err().code, 7, "{bad}");
        }
    }
}
