//! The `bridge` CNI plugin (docs/cni-spec-notes.md §10): every reference option, a transactional ADD, masquerade owned
//! by the attachment so it never leaks, CHECK that works in L2-only mode, STATUS and GC.
//!
//! Verb flow (one netlink socket per namespace, reused for the whole request):
//! - ADD: start the IPAM delegate (on its own thread), then while it runs ensure the bridge, create the veth
//!   pair with the container end directly in the pod, attach the port; then start masquerade (firewall
//!   thread) and meanwhile apply IPAM's answer in the pod, gateway on the bridge, forwarding. Every step
//!   registers its undo; IPAM is released last.
//! - DEL: IPAM DEL and masquerade removal (by owner) run while the kernel deletes the container end (the
//!   host end goes with it; the delete waits for an RCU grace period). Succeeds with an empty or missing
//!   netns.

mod add;
pub mod bridge_dev;
pub mod check;
pub mod config;
pub mod container;
mod del;
pub mod gateway;
mod handles;
pub mod ipam;
mod job;
pub mod naming;
pub mod pod_worker;
pub mod port;
pub mod spoofchk;
pub mod trace;

pub use twill_veth::masq;

use config::BridgeConf;
use handles::{host_handle, open_pod, pod_handle};
use ipnet::IpNet;
use twill_cni::env::Command;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Error, Plugin, Request, Result};

#[derive(Debug, Default)]
pub struct Bridge;

impl Plugin for Bridge {
    /// ADD and CHECK create and inspect the pod's end of the veth; DEL treats a namespace that is gone (or no
    /// longer a namespace) as nothing to delete there.
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race: the
        // interface, its lease and its masquerade rule then always end up all present or all gone.
        let _lock = AttachmentLock::of(req)?;
        add::add(req)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let _lock = AttachmentLock::of(req)?;
        del::del(req)
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = BridgeConf::load(req)?;
        let container_id = req.container_id()?.as_str();
        let ifname = req.ifname()?.as_str();
        let netns_path = req.netns()?;
        if let Some(t) = conf.ipam_type.as_deref() {
            ipam::run(t, Command::Check, req)?;
        }
        let prev = req
            .config
            .prev_result()?
            .ok_or_else(|| Error::failed("Required prevResult missing"))?;
        let pod = open_pod(netns_path)?;
        let host = host_handle()?;
        let pod_h = pod_handle(&pod)?;
        check::check_kernel(&conf, &prev, &host, &pod_h, netns_path, ifname)?;
        if conf.ip_masq && conf.ipam_type.is_some() {
            let addrs: Vec<IpNet> = prev.ips.iter().map(|i| i.address).collect();
            let owner = masq::Owner::new(req.config.name.as_str(), container_id, ifname);
            masq::check(conf.masq_backend, &owner, &addrs)?;
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = BridgeConf::load(req)?;
        match conf.ipam_type.as_deref() {
            Some(t) => ipam::run(t, Command::Status, req),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let conf = BridgeConf::load(req)?;
        masq::gc_attachments(conf.masq_backend, conf.ipam_type.as_deref(), req)
    }
}
