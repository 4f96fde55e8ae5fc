//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, the recorded
//! addresses on the tap and the recorded routes present (each in its table).

use crate::config::TapConf;
use twill_cni::env::Command;
use twill_cni::{Context, Error, Request, Result};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};

pub fn check(req: &Request) -> Result<()> {
    let conf = TapConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    if let Some(t) = conf.ipam_type.as_deref() {
        ipam::run(t, Command::Check, req)?;
    }
    let prev = req
        .config
        .prev_result()?
        .ok_or_else(|| Error::failed("Required prevResult missing"))?;
    let sandbox = netns_path.display().to_string();
    prev.interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            Error::failed(format!(
                "Sandbox in prevResult  doesn't match configured netns: {sandbox}"
            ))
        })?;
    let h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    let link = h
        .link_by_name(ifname)
        .map_err(|_| Error::failed(format!("failed to find interface name {ifname:?}")))?;
    twill_veth::iface::check(&h, ifname, link.index, &prev)
}
