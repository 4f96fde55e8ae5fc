//! dhcp's configuration: the `ipam` keys of the reference — `daemonSocketPath`, `request`, `provide` and
//! `priority` (the metric of the routes in the result).

use crate::options::{self, LeaseOptions, ProvideOption, RequestOption};
use serde::Deserialize;
use std::path::PathBuf;
use twill_cni::{Error, Request, Result};

/// Where the daemon listens unless `daemonSocketPath` or `dhcp daemon -socketpath` says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/cni/dhcp.sock";

#[derive(Debug, Clone)]
pub struct DhcpConf {
    pub socket_path: PathBuf,
    pub options: LeaseOptions,
    /// Route metric; 0 leaves it unset.
    pub priority: u32,
}

#[derive(Deserialize, Default)]
struct RawIpam {
    #[serde(default, rename = "daemonSocketPath")]
    daemon_socket_path: String,
    #[serde(default)]
    provide: Vec<ProvideOption>,
    #[serde(default)]
    request: Vec<RequestOption>,
    #[serde(default)]
    priority: u32,
}

impl DhcpConf {
    /// Only what every verb needs: the socket path (DEL, STATUS and GC must not fail on option syntax).
    pub fn socket_path(req: &Request) -> Result<PathBuf> {
        Ok(Self::raw(req)?.socket())
    }

    pub fn load(req: &Request) -> Result<DhcpConf> {
        let raw = Self::raw(req)?;
        let args: Vec<(&str, &str)> = req.env.args.pairs().collect();
        let options = options::prepare(&raw.provide, &raw.request, &args)?;
        Ok(DhcpConf {
            socket_path: raw.socket(),
            options,
            priority: raw.priority,
        })
    }

    fn raw(req: &Request) -> Result<RawIpam> {
        let ipam = req
            .config
            .get("ipam")
            .ok_or_else(|| Error::invalid_config("IPAM config missing 'ipam' key"))?;
        twill_cni::config::parse_value(ipam).map_err(|e| e.context("ipam"))
    }
}

impl RawIpam {
    fn socket(&self) -> PathBuf {
        if self.daemon_socket_path.is_empty() {
            PathBuf::from(DEFAULT_SOCKET_PATH)
        } else {
            PathBuf::from(&self.daemon_socket_path)
        }
    }
}
