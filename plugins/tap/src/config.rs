//! The tap plugin's configuration: every key of the reference (`multiQueue`, `mtu`, `mac`, `owner`,
//! `group`, `selinuxContext`, `bridge`, `dns`, `ipam`) and its MAC overrides (`CNI_ARGS` `MAC`, then
//! `runtimeConfig.mac`), parsed and validated before anything is touched.

use serde::Deserialize;
use twill_cni::{Dns, Error, Request, Result};
use twill_kernel::MacAddr;

#[derive(Debug, Clone)]
pub struct TapConf {
    pub multi_queue: bool,
    /// `None`: the kernel's default.
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub selinux_context: Option<String>,
    /// A bridge in the pod the tap becomes a port of.
    pub bridge: Option<String>,
    pub dns: Dns,
    pub ipam_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default)]
    mac: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    multi_queue: bool,
    #[serde(default)]
    mtu: i64,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    owner: Option<u32>,
    #[serde(default)]
    group: Option<u32>,
    #[serde(default)]
    selinux_context: String,
    #[serde(default)]
    bridge: String,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl TapConf {
    pub fn load(req: &Request) -> Result<TapConf> {
        let raw: Raw = req.config.plugin_config()?;
        if raw.mtu < 0 || raw.mtu > i64::from(u32::MAX) {
            return Err(Error::invalid_config(format!(
                "invalid MTU {}, must be positive",
                raw.mtu
            )));
        }
        // The reference decodes CNI_ARGS into {IgnoreUnknown, MAC}: any other key fails unless IgnoreUnknown.
        req.env.args.check_known(&["MAC"])?;
        let mut mac = Some(raw.mac).filter(|m| !m.is_empty());
        if let Some(m) = req.env.args.get("MAC").filter(|m| !m.is_empty()) {
            mac = Some(m.to_string());
        }
        if let Some(m) = raw.runtime_config.map(|r| r.mac).filter(|m| !m.is_empty()) {
            mac = Some(m);
        }
        let mac = mac
            .map(|m| {
                m.parse::<MacAddr>().map_err(|e| {
                    Error::invalid_config(format!("invalid args {m} for MAC addr: {e}"))
                })
            })
            .transpose()?;
        Ok(TapConf {
            multi_queue: raw.multi_queue,
            mtu: (raw.mtu > 0).then_some(raw.mtu as u32),
            mac,
            owner: raw.owner,
            group: raw.group,
            selinux_context: Some(raw.selinux_context).filter(|s| !s.is_empty()),
            bridge: Some(raw.bridge).filter(|b| !b.is_empty()),
            dns: raw.dns.unwrap_or_default(),
            ipam_type: req.config.ipam_type().map(str::to_string),
        })
    }
}
