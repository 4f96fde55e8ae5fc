//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, present in the
//! pod with the recorded MAC, and the recorded addresses and routes present. A DPDK-bound device has
//! nothing in the pod to check.

use crate::attach::hw_addr_text;
use crate::config::HostDeviceConf;
use twill_cni::{Context, Error, Request, Result};
use twill_kernel::Handle;
use twill_veth::iface::{self, Wording};

pub fn check(req: &Request) -> Result<()> {
    let conf = HostDeviceConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let (pod, prev) = iface::check_start(req, conf.ipam_type.as_deref(), Wording::Capitalised)?;
    if conf.dpdk {
        return Ok(());
    }
    let intf = iface::recorded(&prev, ifname, req.netns()?, Wording::Capitalised)?;
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
    iface::check(&h, ifname, link.link.index, &prev)
}
