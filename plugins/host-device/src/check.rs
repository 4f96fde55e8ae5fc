//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, present in the
//! pod with the recorded MAC, and the recorded addresses and routes present. A DPDK-bound device has
//! nothing in the pod to check.

use crate::attach::hw_addr_text;
use crate::config::HostDeviceConf;
use twill_cni::env::Command;
use twill_cni::{Context, Error, Request, Result};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs};

pub fn check(req: &Request) -> Result<()> {
    let conf = HostDeviceConf::load(req)?;
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
    if conf.dpdk {
        return Ok(());
    }
    let sandbox = netns_path.display().to_string();
    let intf = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            Error::failed(format!(
                "Sandbox in prevResult  doesn't match configured netns: {sandbox}"
            ))
        })?;
    let h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    let link = h.link_details_by_name(ifname).map_err(|_| {
        Error::failed(format!(
            "Container Interface name in prevResult: {ifname} not found"
        ))
    })?;
    if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty()) {
        let actual = hw_addr_text(&link.hw_addr);
        if mac != actual {
            return Err(Error::failed(format!(
                "Interface {ifname} Mac {mac} doesn't match container Mac: {actual}"
            )));
        }
    }
    twill_veth::iface::check(&h, ifname, link.link.index, &prev)
}
