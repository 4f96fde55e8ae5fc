//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, the master still
//! there, the device a macvlan of the configured mode with the recorded MAC, and the recorded addresses
//! and routes present in the pod (each in its table).

use crate::config::{MacvlanConf, Resolved};
use twill_cni::{Context, Error, Request, Result};
use twill_kernel::Handle;
use twill_veth::iface::{self, Wording};

pub fn check(req: &Request) -> Result<()> {
    let conf = MacvlanConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let (pod, prev) = iface::check_start(req, conf.ipam_type.as_deref(), Wording::Lowercase)?;
    let intf = iface::recorded(&prev, ifname, req.netns()?, Wording::Lowercase)?;
    let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    if conf.link_in_container {
        Resolved::resolve(&conf, &pod_h)?;
    } else {
        let node = Handle::current().context("netlink socket in the host namespace")?;
        Resolved::resolve(&conf, &node)?;
    }

    let link = pod_h.link_by_name(ifname).map_err(|_| {
        Error::failed(format!(
            "container Interface name in prevResult: {ifname} not found"
        ))
    })?;
    let info = pod_h
        .macvlan_info(link.index)
        .with_context(|| format!("failed to read {ifname:?}"))?
        .ok_or_else(|| {
            Error::failed(format!(
                "error: Container interface {ifname} not of type macvlan"
            ))
        })?;
    if info.mode != Some(conf.mode) {
        return Err(Error::failed(format!(
            "container macvlan mode {} does not match expected value: {}",
            info.mode.map(|m| m.as_str()).unwrap_or("unknown"),
            conf.mode.as_str()
        )));
    }
    if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty()) {
        let actual = link.mac.map(|m| m.to_string()).unwrap_or_default();
        if !mac.eq_ignore_ascii_case(&actual) {
            return Err(Error::failed(format!(
                "interface {ifname} Mac {mac} doesn't match container Mac: {actual}"
            )));
        }
    }
    iface::check(&pod_h, ifname, link.index, &prev)
}
