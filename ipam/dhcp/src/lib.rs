//! The `dhcp` IPAM plugin and its daemon, one binary as in the reference: `dhcp daemon [flags]` runs the
//! long-lived DHCP client ([`daemon`]); any other invocation is the short-lived plugin half (this file),
//! which asks the daemon over its Unix socket for the lease of one attachment and prints it as the
//! IPAM result. The plugin half never starts threads of its own and never enters the pod: the daemon
//! does the DHCP exchange inside the pod's namespace on the pod's interface and renews the lease until
//! DEL releases it.

pub mod client;
pub mod config;
pub mod daemon;
pub mod options;
pub mod protocol;

use client::CallError;
use config::DhcpConf;
use protocol::{Attachment, Call, LeaseFacts, Reply};
use std::path::Path;
use twill_cni::env::Command;
use twill_cni::{CniResult, Error, IpConfig, Plugin, Request, Result, Route};

#[derive(Debug, Default)]
pub struct Dhcp;

fn attachment(req: &Request) -> Result<Attachment> {
    Ok(Attachment {
        container_id: req.container_id()?.as_str().to_string(),
        network: req.config.name.as_str().to_string(),
        ifname: req.ifname()?.as_str().to_string(),
    })
}

/// The daemon may run in another working directory, so a relative `CNI_NETNS` is made absolute here.
fn absolute(netns: &Path) -> Result<String> {
    let path = if netns.is_absolute() {
        netns.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::failed(format!("failed to make {netns:?} an absolute path: {e}")))?
            .join(netns)
    };
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::invalid_env(format!("CNI_NETNS {path:?} is not UTF-8")))
}

fn allocate(req: &Request) -> Result<(DhcpConf, LeaseFacts)> {
    let conf = DhcpConf::load(req)?;
    let call = Call::Allocate {
        attachment: attachment(req)?,
        netns: absolute(req.netns()?)?,
        options: conf.options.clone(),
    };
    match client::call(&conf.socket_path, &call)? {
        Reply::Lease(facts) => Ok((conf, facts)),
        other => Err(client::unexpected(&other)),
    }
}

/// The IPAM result of a lease: one address with its gateway, and the routes (the reference's shape).
pub fn lease_result(facts: &LeaseFacts, priority: u32) -> CniResult {
    CniResult {
        interfaces: Vec::new(),
        ips: vec![IpConfig {
            interface: None,
            address: facts.address.into(),
            gateway: facts.gateway.map(Into::into),
        }],
        routes: facts
            .routes
            .iter()
            .map(|r| Route {
                dst: r.dst.into(),
                gw: Some(r.gw.into()),
                priority: (priority != 0).then_some(priority),
                scope: r.link_scope.then_some(253),
                mtu: None,
                adv_mss: None,
                table: None,
            })
            .collect(),
        dns: Default::default(),
    }
}

impl Plugin for Dhcp {
    /// An IPAM plugin never enters the pod; the daemon does, and reports a bad path itself.
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let (conf, facts) = allocate(req)?;
        Ok(lease_result(&facts, conf.priority))
    }

    /// Releases the lease. A daemon that is not running holds no lease, so DEL succeeds without it (the
    /// reference fails there, which blocks pod removal until the daemon is back).
    fn del(&self, req: &Request) -> Result<()> {
        let socket = DhcpConf::socket_path(req)?;
        let call = Call::Release {
            attachment: attachment(req)?,
        };
        match client::call(&socket, &call) {
            Ok(_) | Err(CallError::Unreachable(_)) => Ok(()),
            Err(CallError::Failed(e)) => Err(e),
        }
    }

    /// As the reference: the daemon confirms the lease, acquiring it again if it was lost.
    fn check(&self, req: &Request) -> Result<()> {
        allocate(req).map(|_| ())
    }

    /// Ready when the daemon answers.
    fn status(&self, req: &Request) -> Result<()> {
        let socket = DhcpConf::socket_path(req)?;
        match client::call(&socket, &Call::Status) {
            Ok(_) => Ok(()),
            Err(CallError::Unreachable(e)) => Err(Error::not_available(e.msg)),
            Err(CallError::Failed(e)) => Err(e),
        }
    }

    /// Releases the network's leases of attachments the runtime no longer has. Without a list there is
    /// nothing to compare with, and without a daemon there are no leases.
    fn gc(&self, req: &Request) -> Result<()> {
        let Some(valid) = req.config.valid_attachments()? else {
            return Ok(());
        };
        let socket = DhcpConf::socket_path(req)?;
        let call = Call::Gc {
            network: req.config.name.as_str().to_string(),
            keep: valid
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect(),
        };
        match client::call(&socket, &call) {
            Ok(_) | Err(CallError::Unreachable(_)) => Ok(()),
            Err(CallError::Failed(e)) => Err(e),
        }
    }
}
