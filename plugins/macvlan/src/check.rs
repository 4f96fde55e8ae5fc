//! CHECK, as the reference: IPAM's CHECK, the prevResult's interface in this sandbox, the master still
//! there, the device a macvlan of the configured mode with the recorded MAC, and the recorded addresses
//! and routes present in the pod.

use crate::config::{MacvlanConf, Resolved};
use twill_cni::env::Command;
use twill_cni::{Context, Error, Request, Result};
use twill_ipam::provider as ipam;
use twill_kernel::{Handle, NetNs, RouteFilter};

pub fn check(req: &Request) -> Result<()> {
    let conf = MacvlanConf::load(req)?;
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let pod = NetNs::open(netns_path)
        .with_context(|| format!("failed to open netns {:?}", netns_path.display()))?;
    let pod_h = Handle::in_netns(&pod).context("netlink socket in the pod namespace")?;
    if let Some(t) = conf.ipam_type.as_deref() {
        ipam::run(t, Command::Check, req)?;
    }
    let prev = req
        .config
        .prev_result()?
        .ok_or_else(|| Error::failed("required prevResult missing"))?;
    let sandbox = netns_path.display().to_string();
    let intf = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .ok_or_else(|| {
            Error::failed(format!(
                "sandbox in prevResult  doesn't match configured netns: {sandbox}"
            ))
        })?;
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

    let addrs = pod_h
        .addresses(Some(link.index), None)
        .with_context(|| format!("failed to list addresses of {ifname:?}"))?;
    for ip in &prev.ips {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(Error::failed(format!(
                "Failed to match addr {} on interface {ifname}",
                ip.address
            )));
        }
    }
    let routes = pod_h
        .routes(RouteFilter {
            family: None,
            table: None,
            oif: None,
        })
        .context("failed to list routes")?;
    for r in &prev.routes {
        let found = routes
            .iter()
            .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gateway == r.gw));
        if !found {
            return Err(Error::failed(format!(
                "Failed to match route {} via {:?}",
                r.dst, r.gw
            )));
        }
    }
    Ok(())
}
