//! The host-local verbs (docs/cni-spec-notes.md §4, §11): ADD, DEL, CHECK, STATUS and GC over the on-disk store.

use crate::allocator;
use crate::config::IpamConfig;
use crate::lease::{LeaseContent, Owner};
use crate::resolv;
use crate::store::{
    create_net_dir, create_state_dirs, leased_addresses, read_lease, write_file, Paths, Store,
};
use std::collections::HashSet;
use std::net::IpAddr;
use twill_cni::{CniResult, Command, Error, Plugin, Request, Result};

/// The host-local IPAM plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

fn config(req: &Request) -> Result<IpamConfig> {
    IpamConfig::from_netconf(&req.config, &req.env.args)
}

fn owner(req: &Request) -> Result<Owner> {
    Ok(Owner::new(
        req.container_id()?.as_str(),
        req.ifname()?.as_str(),
    ))
}

impl Plugin for HostLocal {
    /// Never: an IPAM plugin reserves addresses on disk and does not judge `CNI_NETNS`, which it passes on
    /// untouched, as the reference host-local (callers may give it a placeholder path).
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    /// Reserves one address per range set. Idempotent: an attachment that already holds an address in a
    /// range set gets the same address back (the reference fails with "duplicate allocation").
    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = config(req)?;
        let owner = owner(req)?;
        // Read resolvConf before reserving anything: a bad path must not leave leases behind.
        let dns = match &conf.resolv_conf {
            Some(p) => resolv::load(p)?,
            None => Default::default(),
        };
        let mut store = Store::open(Paths::new(&conf.data_dir, &conf.network)?)?;
        let ips = allocator::allocate(&mut store, &conf, &owner)?;
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: conf.routes.clone(),
            dns,
        })
    }

    /// Releases every lease of the attachment (legacy id-only leases when it has no new-format one, as the
    /// reference); succeeds when there is nothing to release.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = config(req)?;
        let owner = owner(req)?;
        let Some(store) = Store::open_existing(Paths::new(&conf.data_dir, &conf.network)?)? else {
            return Ok(());
        };
        store.ensure_index()?;
        let mut released_from = owner.clone();
        let mut held = store.held_by(&owner)?;
        if held.is_empty() {
            released_from = Owner::legacy(&owner.container_id);
            held = store.held_by(&released_from)?;
        }
        let mut errors = Vec::new();
        for ip in &held {
            if let Err(e) = store.release(ip) {
                errors.push(e.msg);
            }
        }
        if errors.is_empty() {
            // The leases are gone, which is what DEL promises; an index we cannot update is left untrusted
            // (no new stamp) and rebuilt by the next operation.
            let forgotten = store
                .index_write(&owner, &[])
                .and_then(|()| store.index_write(&released_from, &[]));
            match forgotten {
                Ok(()) if !held.is_empty() || store.stamp_stale() => store.restamp(),
                Ok(()) => {}
                Err(e) => eprintln!("host-local: index not updated (next operation rescans): {e}"),
            }
            Ok(())
        } else {
            // The index is left untrusted (no restamp): the next operation rebuilds it from the leases.
            Err(Error::failed(errors.join("; ")))
        }
    }

    /// With a `prevResult`, every one of its addresses inside our ranges must be leased to the attachment, and
    /// at least one address must be; without one, the attachment must hold some lease (the reference's check).
    fn check(&self, req: &Request) -> Result<()> {
        let conf = config(req)?;
        let owner = owner(req)?;
        let paths = Paths::new(&conf.data_dir, &conf.network)?;
        let prev: Vec<IpAddr> = req
            .config
            .prev_result()?
            .map(|r| r.ips.iter().map(|i| i.address.addr()).collect())
            .unwrap_or_default();
        if prev.is_empty() {
            let held = match Store::open_existing(paths)? {
                Some(store) => {
                    store.ensure_index()?;
                    let mut held = store.held_by(&owner)?;
                    held.extend(store.held_by(&Owner::legacy(&owner.container_id))?);
                    held
                }
                None => Vec::new(),
            };
            if held.is_empty() {
                return Err(Error::failed(format!(
                    "host-local: attachment {owner} holds no address in network {}",
                    conf.network
                )));
            }
            return Ok(());
        }
        let legacy = Owner::legacy(&owner.container_id);
        let mut held = Vec::new();
        let mut missing = Vec::new();
        for ip in &prev {
            let ours = read_lease(&paths, ip)?
                .is_some_and(|c| c.is_owned_by(&owner) || c.is_owned_by(&legacy));
            if ours {
                held.push(ip.to_string());
            } else if conf.range_sets.iter().any(|s| s.contains(ip)) {
                missing.push(ip.to_string());
            }
        }
        if held.is_empty() {
            let all: Vec<String> = prev.iter().map(ToString::to_string).collect();
            return Err(Error::failed(format!(
                "host-local: attachment {owner} holds none of the addresses in prevResult ({}) in network {}",
                all.join(", "),
                conf.network
            )));
        }
        if !missing.is_empty() {
            return Err(Error::failed(format!(
                "host-local: attachment {owner} does not hold {} from prevResult in network {}",
                missing.join(", "),
                conf.network
            )));
        }
        Ok(())
    }

    /// Code 50 when the data directory is not writable or a range set has no free address left: ADD needs one
    /// address from every set, so one exhausted set is enough to make ADD fail.
    fn status(&self, req: &Request) -> Result<()> {
        let conf = config(req)?;
        let paths = Paths::new(&conf.data_dir, &conf.network)?;
        writable(&paths).map_err(|e| {
            Error::not_available(format!(
                "host-local: data directory not writable: {}",
                e.msg
            ))
        })?;
        let leased: HashSet<IpAddr> = leased_addresses(&paths.net_dir)?.into_iter().collect();
        for (idx, set) in conf.range_sets.iter().enumerate() {
            let used = leased
                .iter()
                .filter(|ip| set.range_of(ip).is_some_and(|r| r.gateway != **ip))
                .count() as u128;
            let capacity = set.capacity();
            if used >= capacity {
                let ranges: Vec<String> = set
                    .ranges()
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect();
                return Err(Error::not_available(format!(
                    "host-local: range set {idx} ({}) of network {} is exhausted: all {capacity} addresses are allocated",
                    ranges.join(","),
                    conf.network
                )));
            }
        }
        Ok(())
    }

    /// Releases every lease whose owner is not a valid attachment, and leases left empty or unreadable by a
    /// crash. Nothing is released when the runtime sent no attachment list; an empty list releases all.
    /// `lock`, `last_reserved_ip.*` and names that are not addresses are never touched.
    fn gc(&self, req: &Request) -> Result<()> {
        let conf = config(req)?;
        let Some(valid) = req.config.valid_attachments()? else {
            return Ok(());
        };
        let Some(store) = Store::open_existing(Paths::new(&conf.data_dir, &conf.network)?)? else {
            return Ok(());
        };
        let valid_pairs: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        for entry in store.scan()? {
            let keep = match &entry.content {
                LeaseContent::Owned(Owner {
                    container_id,
                    ifname: Some(ifname),
                }) => valid_pairs.contains(&(container_id.as_str(), ifname.as_str())),
                LeaseContent::Owned(Owner {
                    container_id,
                    ifname: None,
                }) => valid_ids.contains(container_id.as_str()),
                LeaseContent::Empty | LeaseContent::Unreadable => false,
            };
            if keep {
                kept.push(entry);
            } else if let Err(e) = store.release(&entry.ip) {
                errors.push(e.msg);
            }
        }
        store.rebuild_index(&kept)?;
        store.clear_tmp();
        if errors.is_empty() {
            store.restamp();
            Ok(())
        } else {
            Err(Error::failed(format!(
                "host-local GC: {}",
                errors.join("; ")
            )))
        }
    }
}

/// The network directory can take new leases: it exists (or can be created), the kernel would let us write
/// in it (`access(W_OK)` reports a read-only filesystem even for root), and a file can really be created in
/// our state directory. Nothing in the network directory changes, so the index stays trusted.
fn writable(paths: &Paths) -> Result<()> {
    create_net_dir(paths)?;
    create_state_dirs(paths)?;
    for dir in [&paths.net_dir, &paths.state_dir] {
        if let Err(e) = nix::unistd::access(dir.as_path(), nix::unistd::AccessFlags::W_OK) {
            return Err(Error::failed(format!(
                "{}: {}",
                dir.display(),
                std::io::Error::from(e)
            )));
        }
    }
    let probe = paths
        .state_dir
        .join(format!("status-probe.{}", std::process::id()));
    write_file(&probe, b"", 0o600)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
