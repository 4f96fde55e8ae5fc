//! The sbr plugin's configuration: every key of the reference (`table`, `gateways`, `addSourceHints`),
//! validated before the pod is touched (the reference checks `gateways` only after it added rules).

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use twill_cni::{Error, Request, Result};

/// The first table tried when none is configured (the reference's).
pub const FIRST_TABLE: u32 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbrConf {
    /// A fixed table: ADD only adds the rules, routes in it are the user's.
    pub table: Option<u32>,
    /// Static gateways replacing the prevResult's, at most one per family.
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// Keep the subnet routes in the main table with the pod address as source hint.
    pub add_source_hints: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    table: Option<i64>,
    #[serde(default)]
    gateways: Option<Vec<String>>,
    #[serde(default)]
    add_source_hints: bool,
}

impl SbrConf {
    pub fn load(req: &Request) -> Result<SbrConf> {
        let raw: Raw = req.config.plugin_config()?;
        let table = match raw.table {
            None => None,
            // Table 0 would make the kernel pick an unused table on its own, which DEL could not find.
            Some(t) if (1..=i64::from(u32::MAX)).contains(&t) => Some(t as u32),
            Some(t) => {
                return Err(Error::invalid_config(format!(
                    "invalid table {t}: must be between 1 and {}",
                    u32::MAX
                )))
            }
        };
        let gateways = raw.gateways.unwrap_or_default();
        if gateways.len() > 2 {
            return Err(Error::invalid_config(
                "gateways list cannot contain more than 2 entries (one IPv4, one IPv6)",
            ));
        }
        let mut conf = SbrConf {
            table,
            add_source_hints: raw.add_source_hints,
            ..SbrConf::default()
        };
        for gw in &gateways {
            let ip: IpAddr = gw.parse().map_err(|_| {
                Error::invalid_config(format!("invalid static gateway IP address: {gw}"))
            })?;
            match ip {
                IpAddr::V4(v4) => {
                    if let Some(seen) = conf.gateway_v4.replace(v4) {
                        return Err(Error::invalid_config(format!(
                            "gateways list contains multiple IPv4 addresses: {seen} and {gw}"
                        )));
                    }
                }
                IpAddr::V6(v6) => {
                    if let Some(seen) = conf.gateway_v6.replace(v6) {
                        return Err(Error::invalid_config(format!(
                            "gateways list contains multiple IPv6 addresses: {seen} and {gw}"
                        )));
                    }
                }
            }
        }
        Ok(conf)
    }

    /// The static gateway of `ip`'s family, if configured.
    pub fn gateway_for(&self, ip: &IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => self.gateway_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway_v6.map(IpAddr::V6),
        }
    }
}
