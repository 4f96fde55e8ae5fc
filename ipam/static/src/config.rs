//! static's configuration: `ipam.addresses` (CIDR with optional gateway), `ipam.routes`, `ipam.dns`, and the
//! address overrides in the reference's order — `CNI_ARGS` `IP` adds addresses (and `GATEWAY` sets the
//! gateway of those containing it), `args.cni.ips` replaces them, `runtimeConfig.ips` replaces them again.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use twill_cni::{Dns, Error, Request, Result, Route, Version};

/// One address of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The address with its prefix length (host bits kept, as IPAM results carry them).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct StaticConf {
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(default)]
    address: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    addresses: Option<Vec<RawAddress>>,
    #[serde(default)]
    dns: Option<Dns>,
}

fn parse_cidr(s: &str, what: impl FnOnce() -> String) -> Result<IpNet> {
    s.parse::<IpNet>()
        .map_err(|_| Error::invalid_config(what()))
}

/// `ips` of `args.cni` or `runtimeConfig`: a list of CIDR strings.
fn ips_list(v: Option<&serde_json::Value>, what: &str) -> Result<Option<Vec<IpNet>>> {
    let Some(v) = v else {
        return Ok(None);
    };
    let items: Vec<String> = twill_cni::config::parse_value(v).map_err(|e| e.context(what))?;
    if items.is_empty() {
        return Ok(None);
    }
    items
        .iter()
        .map(|s| {
            parse_cidr(s, || {
                format!("an entry in the 'ips' field is NOT in CIDR notation, got: '{s}'")
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl StaticConf {
    pub fn load(req: &Request) -> Result<StaticConf> {
        let ipam = req
            .config
            .get("ipam")
            .ok_or_else(|| Error::invalid_config("IPAM config missing 'ipam' key"))?;
        let raw: RawIpam = twill_cni::config::parse_value(ipam).map_err(|e| e.context("ipam"))?;
        let mut addresses = raw
            .addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                let address = parse_cidr(&a.address, || {
                    format!(
                        "the 'address' field is expected to be in CIDR notation, got: '{}'",
                        a.address
                    )
                })?;
                Ok(Address {
                    address,
                    gateway: a.gateway,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        req.env.args.check_known(&["IP", "GATEWAY"])?;
        if let Some(ips) = req.env.args.get("IP").filter(|s| !s.is_empty()) {
            for item in ips.split(',').map(str::trim) {
                let address = parse_cidr(item, || {
                    format!("the 'ip' field is expected to be in CIDR notation, got: '{item}'")
                })?;
                addresses.push(Address {
                    address,
                    gateway: None,
                });
            }
        }
        if let Some(gws) = req.env.args.get("GATEWAY").filter(|s| !s.is_empty()) {
            for item in gws.split(',') {
                let gw: IpAddr = item.trim().parse().map_err(|_| {
                    Error::invalid_config(format!("invalid gateway address: {item}"))
                })?;
                for a in addresses.iter_mut().filter(|a| a.address.contains(&gw)) {
                    a.gateway = Some(gw);
                }
            }
        }
        if let Some(ips) = ips_list(req.config.args_cni("ips"), "args.cni.ips")? {
            addresses = ips
                .into_iter()
                .map(|address| Address {
                    address,
                    gateway: None,
                })
                .collect();
        }
        if let Some(ips) = ips_list(req.config.runtime_config("ips"), "runtimeConfig.ips")? {
            addresses = ips
                .into_iter()
                .map(|address| Address {
                    address,
                    gateway: None,
                })
                .collect();
        }

        let v4 = addresses
            .iter()
            .filter(|a| a.address.addr().is_ipv4())
            .count();
        let v6 = addresses.len() - v4;
        if (v4 > 1 || v6 > 1) && req.version() < Version::V0_3_0 {
            return Err(Error::invalid_config(format!(
                "CNI version {} does not support more than 1 address per family",
                req.version()
            )));
        }
        Ok(StaticConf {
            addresses,
            routes: raw.routes.unwrap_or_default(),
            dns: raw.dns.unwrap_or_default(),
        })
    }
}
