//! The `bandwidth` CNI plugin, chained after an interface plugin that made a veth pair: traffic to
//! the container is shaped by a token bucket (`tbf`) on the host end of the veth; traffic from the
//! container is redirected from the host end's ingress to an ifb device and shaped on the ifb's
//! egress. Keys, defaults, device names and the qdiscs match the reference v1.10.
//!
//! The ifb is named from a hash of network and container id (as the reference names it, so either
//! plugin's DEL removes the other's device) and carries an alias naming its owner, which lets GC
//! find the ifbs of attachments that no longer exist. The qdiscs on the host veth vanish with the
//! veth, which the interface plugin deletes.

pub mod config;
pub mod tbf;

use config::Limits;
use twill_cni::lock::AttachmentLock;
use twill_cni::{
    CniResult, Command, Context, Error, Interface, Plugin, Request, Result, Undo, Version,
};
use twill_kernel::tc::TcHandle;
use twill_kernel::{Handle, Link, NetNs};

/// Device names are at most 15 bytes: "bwp" and 12 hex digits.
const IFB_NAME_LEN: usize = 15;
const IFB_PREFIX: &str = "bwp";
/// Alias of our ifb devices: `<prefix><network> <container id>`.
const ALIAS_PREFIX: &str = "twill-bandwidth ";
/// The root tbf's handle (`1:`) and the redirect filter's class id and priority, as the reference.
const ROOT_HANDLE: TcHandle = TcHandle { major: 1, minor: 0 };
const CLASS_ID: TcHandle = TcHandle { major: 1, minor: 1 };
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
const FILTER_PRIO: u16 = 1;

#[derive(Debug, Default)]
pub struct Bandwidth;

/// The ifb's name for an attachment: the reference's `bwp` + SHA-512(network + container id).
pub fn ifb_name(network: &str, container_id: &str) -> String {
    let digest = twill_firewall::hash::sha512_hex(
        format!("{network}{container_id}").as_bytes(),
        IFB_NAME_LEN - IFB_PREFIX.len(),
    );
    format!("{IFB_PREFIX}{digest}")
}

fn alias(network: &str, container_id: &str) -> String {
    format!("{ALIAS_PREFIX}{network} {container_id}")
}

/// (network, container id) of an alias we wrote.
fn parse_alias(alias: &str) -> Option<(&str, &str)> {
    alias.strip_prefix(ALIAS_PREFIX)?.split_once(' ')
}

fn prev_result(req: &Request) -> Result<CniResult> {
    req.config.prev_result()?.ok_or_else(|| {
        Error::invalid_config("bandwidth must be called as a chained plugin: no prevResult")
    })
}

/// The host end of the container interface's veth, which must be listed in `prevResult` as a host
/// interface (no sandbox).
fn host_interface(req: &Request, prev: &CniResult, host: &Handle) -> Result<Link> {
    if prev.interfaces.is_empty() {
        return Err(Error::failed("no interfaces provided in prevResult"));
    }
    let ifname = req.ifname()?.as_str();
    let ns = NetNs::open(req.netns()?).context("open container network namespace")?;
    let pod = Handle::in_netns(&ns).context("netlink socket in container namespace")?;
    let peer = pod
        .link_by_name(ifname)
        .ok()
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .and_then(|l| l.peer_index)
        .ok_or_else(|| Error::failed(format!("container interface {ifname} has no veth peer")))?;
    let link = host
        .link_by_index(peer)
        .map_err(|_| Error::failed(format!("veth peer with index {peer} is not in host ns")))?;
    if !prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.as_deref().unwrap_or("").is_empty() && i.name == link.name)
    {
        return Err(Error::failed(format!(
            "no veth peer of container interface {ifname} found in host ns among prevResult's interfaces"
        )));
    }
    Ok(link)
}

/// ADD and DEL of one attachment never interleave (a retried ADD overlapping its DEL would otherwise
/// leave an ifb behind, or delete the one the ADD just made).
fn attachment_lock(req: &Request) -> Result<AttachmentLock> {
    AttachmentLock::of(req)
}

fn limits_or_none(req: &Request) -> Result<Option<Limits>> {
    Ok(config::limits(&req.config)?.filter(|l| !l.is_zero()))
}

fn delete_ifb(host: &Handle, name: &str) -> Result<()> {
    match host.delete_link_by_name(name) {
        Err(e) if !e.is_not_found() => Err(e).context(format!("delete ifb {name}")),
        _ => Ok(()),
    }
}

fn check_tbf(host: &Handle, link: &Link, want: twill_kernel::tc::Tbf) -> Result<()> {
    let qdiscs = host
        .qdiscs(link.index)
        .context(format!("list qdiscs of {}", link.name))?;
    let Some(have) = qdiscs.iter().find(|q| q.kind == "tbf").and_then(|q| q.tbf) else {
        return Err(Error::failed(format!(
            "Failed to find qdisc on {}",
            link.name
        )));
    };
    let what = if have.rate != want.rate {
        "Rate"
    } else if have.limit != want.limit {
        "Limit"
    } else if have.buffer != want.buffer {
        "Buffer"
    } else {
        return Ok(());
    };
    Err(Error::failed(format!(
        "{what} doesn't match on {}: have {have:?}, want {want:?}",
        link.name
    )))
}

impl Plugin for Bandwidth {
    /// ADD and CHECK find the veth peer from inside the container; DEL and GC never enter it.
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    /// 0.3.0 and later, as the reference: a chained plugin needs `prevResult`, which 0.1/0.2 lack.
    fn oldest_version(&self) -> Version {
        Version::V0_3_0
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let limits = limits_or_none(req)?;
        let mut result = prev_result(req)?;
        let Some(limits) = limits else {
            return Ok(result);
        };
        let _lock = attachment_lock(req)?;
        let host = Handle::current().context("netlink socket")?;
        let veth = host_interface(req, &result, &host)?;
        let ticks = twill_kernel::tc::ticks_per_usec();
        let network = req.config.name.as_str();
        let cid = req.container_id()?.as_str();
        let mut undo = Undo::new();
        if limits.egress().is_some() {
            // The redirect filter's attachment waits for an RCU grace period counted from the ingress
            // qdisc's creation (the kernel's mini-qdisc swap): start that clock before the other work.
            host.add_ingress_qdisc(veth.index)
                .context(format!("create ingress qdisc on {}", veth.name))?;
            let (h, index) = (&host, veth.index);
            undo.push("delete ingress qdisc", move || {
                h.delete_qdisc(index, TcHandle::INGRESS)
                    .context("delete ingress qdisc")
            });
        }
        let ifb = match limits.egress() {
            Some(_) => {
                let name = ifb_name(network, cid);
                let ifb = host
                    .create_ifb(&name, veth.mtu)
                    .context(format!("adding link {name}"))?;
                let (h, n) = (&host, name.clone());
                undo.push("delete ifb", move || delete_ifb(h, &n));
                result.interfaces.push(Interface {
                    name,
                    mac: ifb.mac.map(|m| m.to_string()),
                    ..Default::default()
                });
                Some(ifb)
            }
            None => None,
        };
        // The token buckets (and the ifb's alias) go in on a second socket while this one waits for the
        // redirect filter.
        let root_made = std::sync::atomic::AtomicBool::new(false);
        let (buckets, redirect) = std::thread::scope(|s| {
            let worker = s.spawn(|| -> Result<()> {
                let h = Handle::current().context("netlink socket")?;
                if let Some(shape) = limits.ingress() {
                    h.add_tbf_root(veth.index, ROOT_HANDLE, &tbf::tbf(shape, ticks))
                        .context(format!("create ingress qdisc on {}", veth.name))?;
                    root_made.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if let (Some(shape), Some(ifb)) = (limits.egress(), &ifb) {
                    h.add_tbf_root(ifb.index, ROOT_HANDLE, &tbf::tbf(shape, ticks))
                        .context(format!("create ifb qdisc on {}", ifb.name))?;
                    h.set_link_alias(ifb.index, &alias(network, cid))
                        .context(format!("label {}", ifb.name))?;
                }
                Ok(())
            });
            let redirect = match &ifb {
                Some(ifb) => host
                    .add_redirect_filter(
                        veth.index,
                        INGRESS_HANDLE,
                        FILTER_PRIO,
                        CLASS_ID,
                        ifb.index,
                    )
                    .context(format!(
                        "add filter redirecting {} to {}",
                        veth.name, ifb.name
                    )),
                None => Ok(()),
            };
            let buckets = worker
                .join()
                .unwrap_or_else(|_| Err(Error::failed("bandwidth worker panicked")));
            (buckets, redirect)
        });
        if let Err(e) = buckets.and(redirect) {
            // The veth's root qdisc is ours to remove only if this ADD made it; the rest is in `undo`.
            if root_made.into_inner() {
                let _ = host.delete_qdisc(veth.index, TcHandle::ROOT);
            }
            return Err(e);
        }
        undo.commit();
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let _lock = attachment_lock(req)?;
        let host = Handle::current().context("netlink socket")?;
        let name = ifb_name(req.config.name.as_str(), req.container_id()?.as_str());
        delete_ifb(&host, &name)
    }

    fn check(&self, req: &Request) -> Result<()> {
        let limits = limits_or_none(req)?;
        let prev = prev_result(req)?;
        let host = Handle::current().context("netlink socket")?;
        let veth = host_interface(req, &prev, &host)?;
        let Some(limits) = limits else {
            return Ok(());
        };
        let ticks = twill_kernel::tc::ticks_per_usec();
        if let Some(shape) = limits.ingress() {
            check_tbf(&host, &veth, tbf::tbf(shape, ticks))?;
        }
        if let Some(shape) = limits.egress() {
            let name = ifb_name(req.config.name.as_str(), req.container_id()?.as_str());
            let ifb = host
                .link_by_name(&name)
                .map_err(|e| Error::failed(format!("get ifb device: {e}")))?;
            check_tbf(&host, &ifb, tbf::tbf(shape, ticks))?;
            let targets = host
                .redirect_targets(veth.index, INGRESS_HANDLE)
                .context(format!("list filters of {}", veth.name))?;
            if !targets.contains(&ifb.index) {
                return Err(Error::failed(format!(
                    "no filter redirects {} to {name}",
                    veth.name
                )));
            }
        }
        Ok(())
    }

    /// Deletes the ifb devices this network's ADDs created for containers no longer in the valid list.
    fn gc(&self, req: &Request) -> Result<()> {
        let Some(valid) = req.config.valid_attachments()? else {
            return Ok(());
        };
        let network = req.config.name.as_str();
        let host = Handle::current().context("netlink socket")?;
        let mut errors = Vec::new();
        for ifb in host.ifbs().context("list ifb devices")? {
            let Some((net, cid)) = ifb.alias.as_deref().and_then(parse_alias) else {
                continue;
            };
            if net != network || valid.iter().any(|a| a.container_id == cid) {
                continue;
            }
            if let Err(e) = delete_ifb(&host, &ifb.link.name) {
                errors.push(e.msg);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "bandwidth GC: {}",
                errors.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_name_is_the_references() {
        // utils.MustFormatHashWithPrefix(15, "bwp", name+id): sha512("net1cid1") starts with these digits.
        let n = ifb_name("net1", "cid1");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("bwp"));
        let full = twill_firewall::hash::sha512_hex(b"net1cid1", 128);
        assert_eq!(&n[3..], &full[..12]);
    }

    #[test]
    fn alias_round_trips() {
        assert_eq!(
            parse_alias(&alias("my-net", "abc123")),
            Some(("my-net", "abc123"))
        );
        assert_eq!(parse_alias("something else"), None);
    }
}
