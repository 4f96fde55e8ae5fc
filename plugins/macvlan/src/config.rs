//! The macvlan plugin's configuration: every key of the reference (`master`, `mode`, `mtu`, `mac`,
//! `linkInContainer`, `bcqueuelen`, `dns`, `ipam`) and its MAC overrides — `CNI_ARGS` `MAC`, then
//! `runtimeConfig.mac` — parsed before anything is touched. What needs the kernel (the master defaulting
//! to the default route's device, the MTU bound by the master's) is resolved by [`Resolved::resolve`].

use serde::Deserialize;
use twill_cni::{Context, Dns, Error, Request, Result};
use twill_kernel::{Handle, MacAddr, MacvlanMode, RouteFilter, TABLE_MAIN};

#[derive(Debug, Clone)]
pub struct MacvlanConf {
    /// `None`: the device of the default route.
    pub master: Option<String>,
    pub mode: MacvlanMode,
    /// As configured; 0 = the master's (the kernel's default).
    pub mtu: i64,
    pub mac: Option<MacAddr>,
    /// The master lives in the pod's namespace, not the node's.
    pub link_in_container: bool,
    pub bc_queue_len: Option<u32>,
    /// The `dns` key: the result's DNS, whatever IPAM said (as the reference).
    pub dns: Dns,
    pub ipam_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    master: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    mtu: i64,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    link_in_container: bool,
    #[serde(default, rename = "bcqueuelen")]
    bc_queue_len: u32,
    #[serde(default)]
    dns: Option<Dns>,
}

fn parse_mac(text: &str) -> Result<MacAddr> {
    text.parse::<MacAddr>()
        .map_err(|e| Error::invalid_config(format!("invalid args {text} for MAC addr: {e}")))
}

impl MacvlanConf {
    pub fn load(req: &Request) -> Result<MacvlanConf> {
        let raw: Raw = req.config.plugin_config()?;
        let mode = MacvlanMode::parse(&raw.mode).ok_or_else(|| {
            Error::invalid_config(format!("unknown macvlan mode: {:?}", raw.mode))
        })?;
        if raw.mtu < 0 || raw.mtu > i64::from(u32::MAX) {
            return Err(Error::invalid_config(format!(
                "invalid MTU {}, must be [0, master MTU]",
                raw.mtu
            )));
        }
        // The reference decodes CNI_ARGS into {IgnoreUnknown, MAC}: any other key fails unless IgnoreUnknown.
        req.env.args.check_known(&["MAC"])?;
        let mut mac = Some(raw.mac).filter(|m| !m.is_empty());
        if let Some(m) = req.env.args.get("MAC").filter(|m| !m.is_empty()) {
            mac = Some(m.to_string());
        }
        if let Some(m) = req
            .config
            .runtime_config("mac")
            .and_then(|v| v.as_str())
            .filter(|m| !m.is_empty())
        {
            mac = Some(m.to_string());
        }
        Ok(MacvlanConf {
            master: Some(raw.master).filter(|m| !m.is_empty()),
            mode,
            mtu: raw.mtu,
            mac: mac.as_deref().map(parse_mac).transpose()?,
            link_in_container: raw.link_in_container,
            bc_queue_len: (raw.bc_queue_len > 0).then_some(raw.bc_queue_len),
            dns: raw.dns.unwrap_or_default(),
            ipam_type: req.config.ipam_type().map(str::to_string),
        })
    }
}

/// The master device, found in the namespace it lives in.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub master_name: String,
    pub master_index: u32,
    /// `None`: the kernel's default (the master's MTU).
    pub mtu: Option<u32>,
}

/// The device of the first default route of the main table (IPv4 before IPv6, as the reference lists).
fn default_route_device(h: &Handle) -> Result<String> {
    let routes = h
        .routes(RouteFilter {
            family: None,
            table: Some(TABLE_MAIN),
            oif: None,
        })
        .context("failed to list routes")?;
    let oif = routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_unspecified())
        .and_then(|r| r.oif)
        .ok_or_else(|| Error::failed("no default route interface found"))?;
    Ok(h.link_by_index(oif)
        .with_context(|| format!("failed to look up link {oif}"))?
        .name)
}

impl Resolved {
    /// `h` is a socket in the master's namespace (the node's, or the pod's with `linkInContainer`).
    pub fn resolve(conf: &MacvlanConf, h: &Handle) -> Result<Resolved> {
        let name = match &conf.master {
            Some(m) => m.clone(),
            None => default_route_device(h)?,
        };
        let master = h
            .link_by_name(&name)
            .with_context(|| format!("failed to lookup master {name:?}"))?;
        if conf.mtu > i64::from(master.mtu) {
            return Err(Error::failed(format!(
                "invalid MTU {}, must be [0, master MTU({})]",
                conf.mtu, master.mtu
            )));
        }
        Ok(Resolved {
            master_name: name,
            master_index: master.index,
            mtu: (conf.mtu > 0).then_some(conf.mtu as u32),
        })
    }
}
