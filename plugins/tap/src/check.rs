//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, the recorded
//! addresses on the tap and the recorded routes present (each in its table).

use crate::config::TapConf;
use twill_cni::{Context, Error, Request, Result};
use twill_kernel::Handle;
use twill_veth::iface::{self, Wording};

pub fn check(req: &Request) -> Result<()> {
    let conf = TapConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let (pod, prev) = iface::check_start(req, conf.ipam_type.as_deref(), Wording::Capitalised)?;
    iface::recorded(&prev, ifname, req.netns()?, Wording::Capitalised)?;
    let h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    let link = h
        .link_by_name(ifname)
        .map_err(|_| Error::failed(format!("failed to find interface name {ifname:?}")))?;
    iface::check(&h, ifname, link.index, &prev)
}
