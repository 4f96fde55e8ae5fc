//! The `portmap` CNI plugin (docs/cni-spec-notes.md §12 portmap and §3.3 `portMappings`): host ports forwarded to a
//! pod, chained after an interface plugin. nftables over netlink by default, iptables with
//! `"backend": "iptables"`.
//!
//! The kernel ruleset is the only state: every rule names its attachment (see [`owner`]), so DEL works
//! without `runtimeConfig` and without the netns, GC finds rules of vanished attachments, and a second
//! attachment asking for a host socket already taken is refused with the owner's name. All operations run
//! under one lock ([`lock`]) so that check-then-add is atomic across concurrent plugin processes.

pub mod config;
pub mod conntrack;
pub mod container;
pub mod iptables;
pub mod localnet;
pub mod lock;
pub mod nft;
pub mod owner;
pub mod rules;

use config::{Backend as BackendKind, PortMapConf, Protocol};
use container::ContainerIps;
use owner::Owner;
use rules::{Backend, Family, Listed, Plan};
use std::collections::HashSet;
use std::net::IpAddr;
use twill_cni::{CniResult, Command, Error, Plugin, Request, Result, Undo};

#[derive(Debug, Default)]
pub struct Portmap;

fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Nftables => Box::new(nft::Nftables::default()),
        BackendKind::Iptables => Box::new(iptables::Iptables::default()),
    }
}

fn owner_of(req: &Request) -> Result<Owner> {
    Ok(Owner::new(
        req.config.name.as_str(),
        req.container_id()?.as_str(),
        req.ifname()?.as_str(),
    ))
}

/// The plans for each family the container has an address in and at least one mapping applies to.
fn plans(conf: &PortMapConf, owner: &Owner, ips: &ContainerIps) -> Vec<Plan> {
    let addrs = [ips.v4.map(IpAddr::V4), ips.v6.map(IpAddr::V6)];
    addrs
        .into_iter()
        .flatten()
        .map(|ip| Plan::new(conf, owner, ip))
        .filter(|p| !p.rules.is_empty())
        .collect()
}

fn prev_result(req: &Request) -> Result<CniResult> {
    req.config.prev_result()?.ok_or_else(|| {
        Error::invalid_config(
            "portmap must be called as a chained plugin: the request has no prevResult",
        )
    })
}

/// Refuses a plan whose host sockets another attachment already forwards (the reference lets the last
/// writer win silently; we fail with a clear error naming the owner instead).
fn check_conflicts(plan: &Plan, listed: &[Listed], container_id: &str, ifname: &str) -> Result<()> {
    for r in &plan.rules {
        let Some(want) = &r.dnat_tag.claim else {
            continue;
        };
        for l in listed.iter().filter(|l| l.tag.owner != plan.owner) {
            if let Some(have) = &l.tag.claim {
                if have.overlaps(want) {
                    return Err(Error::failed(format!(
                        "host {} ({}) is already mapped by {} (as {}); \
                         refusing to map it for container {} interface {}",
                        want.describe(),
                        plan.family.name(),
                        l.tag.owner.describe(),
                        have.describe(),
                        container_id,
                        ifname
                    )));
                }
            }
        }
    }
    Ok(())
}

impl Plugin for Portmap {
    /// Never: its rules live in the host's namespace and name the container's addresses from `prevResult`.
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = PortMapConf::parse(&req.config)?;
        let prev = prev_result(req)?;
        if conf.mappings.is_empty() {
            return Ok(prev);
        }
        let owner = owner_of(req)?;
        let ips = ContainerIps::from_result(&prev, req.ifname()?.as_str());
        if ips.is_empty() {
            eprintln!(
                "portmap: prevResult has no address on {}: nothing to forward",
                req.ifname()?
            );
            return Ok(prev);
        }
        let plans = plans(&conf, &owner, &ips);
        let mut fw = backend(conf.backend);
        let lock = lock::Lock::acquire()?;
        // Check every family before changing any, so a conflict leaves nothing behind.
        let mut listed = Vec::new();
        for plan in &plans {
            let l = fw.list(plan.family)?;
            check_conflicts(
                plan,
                &l,
                req.container_id()?.as_str(),
                req.ifname()?.as_str(),
            )?;
            listed.push(l);
        }
        let fw = std::cell::RefCell::new(fw);
        let mut undo = Undo::new();
        for (plan, l) in plans.iter().zip(&listed) {
            // A repeated ADD of the same attachment replaces its rules rather than duplicating them.
            let mine: Vec<Listed> = l.iter().filter(|x| x.tag.owner == owner).cloned().collect();
            fw.borrow_mut()
                .apply(plan.family, &mine, Some(plan), false)
                .map_err(|e| {
                    e.context(format!("setting up {} port mappings", plan.family.name()))
                })?;
            let (family, fw, owner) = (plan.family, &fw, &owner);
            undo.push(
                format!("remove {} port mappings", family.name()),
                move || remove_owner(&mut **fw.borrow_mut(), family, owner),
            );
        }
        // A repeated ADD whose container lost a family must not leave that family's old rules behind.
        for family in Family::BOTH {
            if !plans.iter().any(|p| p.family == family) {
                remove_owner(&mut **fw.borrow_mut(), family, &owner)?;
            }
        }
        if conf.snat {
            if let Some(v4) = ips.v4 {
                if let Some(ifname) = localnet::route_interface(v4)? {
                    localnet::enable(&ifname)?;
                }
            }
        }
        undo.commit();
        drop(lock);
        flush_stale_udp(&plans);
        Ok(prev)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let kind = config::backend_only(&req.config)?;
        let owner = owner_of(req)?;
        let mut fw = backend(kind);
        let _lock = lock::Lock::acquire()?;
        // Both families are always tried (the request may not say which the attachment had); a failure in
        // one does not stop cleanup of the other.
        let errors: Vec<String> = Family::BOTH
            .into_iter()
            .filter_map(|family| remove_owner(&mut *fw, family, &owner).err())
            .map(|e| e.msg)
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(format!("portmap DEL: {}", errors.join("; "))))
        }
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = PortMapConf::parse(&req.config)?;
        let prev = prev_result(req)?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        let owner = owner_of(req)?;
        let ips = ContainerIps::from_result(&prev, req.ifname()?.as_str());
        let mut fw = backend(conf.backend);
        for plan in plans(&conf, &owner, &ips) {
            let listed = fw.list(plan.family)?;
            let mine: Vec<&Listed> = listed.iter().filter(|l| l.tag.owner == owner).collect();
            for r in &plan.rules {
                if !mine.iter().any(|l| l.tag == r.dnat_tag) {
                    return Err(Error::failed(format!(
                        "portmap CHECK: {} DNAT rule for host port {} -> {}:{} is missing",
                        plan.family.name(),
                        r.dnat_tag.claim.map(|c| c.to_string()).unwrap_or_default(),
                        r.container_ip,
                        r.mapping.container_port
                    )));
                }
            }
            let marks = mine.iter().filter(|l| l.tag.claim.is_none()).count();
            if marks < plan.mark_rule_count() {
                return Err(Error::failed(format!(
                    "portmap CHECK: {} masquerade mark rules missing ({marks} of {})",
                    plan.family.name(),
                    plan.mark_rule_count()
                )));
            }
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let kind = config::backend_only(&req.config)?;
        let Some(valid) = req.config.valid_attachments()? else {
            // Without the list we cannot know what is stale; releasing everything would be wrong.
            return Ok(());
        };
        let network = req.config.name.as_str();
        let keep: HashSet<Owner> = valid
            .iter()
            .map(|a| Owner::new(network, &a.container_id, &a.ifname))
            .collect();
        let mut fw = backend(kind);
        let _lock = lock::Lock::acquire()?;
        let mut errors = Vec::new();
        for family in Family::BOTH {
            // GC keeps going past a failing family (docs/cni-spec-notes.md §4 GC) and reports everything at the end.
            let result = fw.list(family).and_then(|listed| {
                let stale: Vec<Listed> = listed
                    .iter()
                    .filter(|l| l.tag.owner.in_network(network) && !keep.contains(&l.tag.owner))
                    .cloned()
                    .collect();
                if stale.is_empty() {
                    return Ok(());
                }
                fw.apply(family, &stale, None, stale.len() == listed.len())
            });
            if let Err(e) = result {
                errors.push(format!("{}: {e}", family.name()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(format!("portmap GC: {}", errors.join("; "))))
        }
    }
}

/// Deletes every rule of `owner` in `family`, and the shared structure when nobody else has rules left.
fn remove_owner(fw: &mut dyn Backend, family: Family, owner: &Owner) -> Result<()> {
    let listed = fw.list(family)?;
    let mine: Vec<Listed> = listed
        .iter()
        .filter(|l| &l.tag.owner == owner)
        .cloned()
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    fw.apply(family, &mine, None, mine.len() == listed.len())
        .map_err(|e| {
            e.context(format!(
                "removing {} port mappings of {owner}",
                family.name()
            ))
        })
}

/// After the rules are in, delete UDP conntrack entries for the mapped host ports so new packets hit the DNAT
/// rules; failures are reported on stderr only, as the reference does (the mapping itself is in place).
fn flush_stale_udp(plans: &[Plan]) {
    for plan in plans {
        let ports: Vec<u16> = plan
            .rules
            .iter()
            .filter(|r| r.mapping.protocol == Protocol::Udp)
            .map(|r| r.mapping.host_port)
            .collect();
        let family = match plan.family {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        };
        if let Err(e) = conntrack::flush(family, Protocol::Udp.number(), &ports) {
            eprintln!(
                "portmap: flushing stale {} UDP conntrack entries: {e}",
                plan.family.name()
            );
        }
    }
}
