//! The `ptp` CNI plugin: a veth pair per pod, the pod's addresses on its end with every route via the
//! gateway, the gateway as a /32 (/128) on the host end with a host route to each pod address; `ipMasq`
//! owned by the attachment (removed by DEL and GC without the netns); STATUS and GC.
//!
//! - ADD: IPAM on its own thread (host-local in-process when it is ours, as the bridge does) while the
//!   pair is created with the container end directly in the pod; then the pod end, the host end and the
//!   masquerade rules (on another thread). Every step registers its undo; IPAM is released last.
//! - DEL: IPAM DEL and masquerade removal run while the kernel deletes the container end; succeeds with an
//!   empty or missing netns.

mod add;
pub mod check;
pub mod config;
pub mod container;
mod del;
pub mod host;

pub use twill_veth::masq;

use config::PtpConf;
use twill_cni::env::Command;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Context, Error, Plugin, Request, Result};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};

#[derive(Debug, Default)]
pub struct Ptp;

impl Plugin for Ptp {
    /// ADD and CHECK work inside the pod; DEL treats a namespace that is gone as nothing to delete there.
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // ADD and DEL of one attachment never overlap, even when a runtime's retry makes them race.
        let _lock = AttachmentLock::of(req)?;
        add::add(req)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let _lock = AttachmentLock::of(req)?;
        del::del(req)
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = PtpConf::load(req)?;
        let ipam_type = conf.require_ipam()?;
        let container_id = req.container_id()?.as_str();
        let ifname = req.ifname()?.as_str();
        let netns_path = req.netns()?;
        let pod = NetNs::open(netns_path)
            .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
        ipam::run(ipam_type, Command::Check, req)?;
        let prev = req
            .config
            .prev_result()?
            .ok_or_else(|| Error::failed("ptp: Required prevResult missing"))?;
        let host = Handle::current().context("netlink socket in the host namespace")?;
        let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
        check::check_kernel(&prev, &host, &pod_h, netns_path, ifname)?;
        if conf.ip_masq {
            let addrs: Vec<_> = prev.ips.iter().map(|i| i.address).collect();
            let owner = masq::Owner::new(req.config.name.as_str(), container_id, ifname);
            masq::check(conf.masq_backend, &owner, &addrs)?;
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<()> {
        let conf = PtpConf::load(req)?;
        ipam::run(conf.require_ipam()?, Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let conf = PtpConf::load(req)?;
        masq::gc_attachments(conf.masq_backend, conf.ipam_type.as_deref(), req)
    }
}
