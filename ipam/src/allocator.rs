//! ADD: one address per range set for an attachment (docs/cni-spec-notes.md §11.3), under the network's lock.
//!
//! Differences from the reference, on purpose:
//! * An attachment that already holds an address in a range set gets that address back (ADD is idempotent),
//!   where the reference fails with "duplicate allocation is not allowed". A runtime retrying an ADD whose
//!   answer it lost (timeout, crash) then converges instead of failing until it sends DEL.
//! * Whether the attachment holds an address is answered from the attachment index ([`crate::index`]), not by
//!   reading every lease file, so ADD costs the same with 10 or 10,000 leases.
//! * The lock is held across all range sets, so an ADD is all-or-nothing towards other allocators.

use crate::config::IpamConfig;
use crate::lease::{LeaseContent, Owner};
use crate::store::Store;
use std::collections::HashSet;
use std::net::IpAddr;
use twill_cni::{Error, IpConfig, Result};

/// Allocate (or find) one address per range set for `owner`. On failure nothing this call reserved is kept.
pub fn allocate(store: &mut Store, conf: &IpamConfig, owner: &Owner) -> Result<Vec<IpConfig>> {
    let requested = requested_per_set(conf)?;
    store.ensure_index()?;
    let held = store.held_by(owner)?;
    let mut fresh: Vec<(usize, IpAddr)> = Vec::new();
    let outcome = (|| {
        let mut out = Vec::new();
        for (idx, set) in conf.range_sets.iter().enumerate() {
            let ip = match requested[idx] {
                Some(ip) if held.contains(&ip) => ip,
                Some(ip) => {
                    reserve_requested(store, conf, idx, ip, owner)?;
                    fresh.push((idx, ip));
                    ip
                }
                None => match held.iter().find(|ip| set.contains(ip)) {
                    // Idempotent ADD: the attachment already holds an address in this set.
                    Some(ip) => *ip,
                    None => {
                        let ip = reserve_next(store, idx, set, owner)?;
                        fresh.push((idx, ip));
                        ip
                    }
                },
            };
            // The range exists: `ip` was found in, or checked against, this set.
            let range = set
                .range_of(&ip)
                .ok_or_else(|| Error::failed(format!("{ip} is not in range set {idx}")))?;
            out.push(IpConfig {
                interface: None,
                address: range.address(ip),
                gateway: Some(range.gateway),
            });
        }
        Ok(out)
    })();
    match outcome {
        Ok(ips) => {
            if !fresh.is_empty() {
                for (idx, ip) in &fresh {
                    // The cursor only steers round-robin; losing it costs fairness, not correctness.
                    if let Err(e) = store.set_last_reserved(*idx, ip) {
                        eprintln!("host-local: {e}");
                    }
                }
                let mut all = held.clone();
                all.extend(fresh.iter().map(|(_, ip)| *ip));
                // The leases exist and the ADD has succeeded; an index we could not update is simply left
                // untrusted (no new stamp) and rebuilt by the next operation.
                match store.index_write(owner, &all) {
                    Ok(()) => store.restamp(),
                    Err(e) => {
                        eprintln!("host-local: index not updated (next operation rescans): {e}")
                    }
                }
            }
            Ok(ips)
        }
        Err(e) => {
            let mut rolled_back = true;
            for (_, ip) in &fresh {
                rolled_back &= store.release(ip).is_ok();
            }
            // Only our own, now undone, changes happened since the index was trusted.
            if rolled_back && !fresh.is_empty() {
                store.restamp();
            }
            Err(e)
        }
    }
}

/// The requested address of each range set (at most one per set), checking that every requested address
/// belongs to some set and is not a gateway.
fn requested_per_set(conf: &IpamConfig) -> Result<Vec<Option<IpAddr>>> {
    let mut per_set: Vec<Option<IpAddr>> = vec![None; conf.range_sets.len()];
    for ip in &conf.requested {
        let Some(idx) = conf.range_sets.iter().position(|s| s.contains(ip)) else {
            return Err(Error::invalid_config(format!(
                "requested IP address {ip} is not in any range of the configuration"
            )));
        };
        if let Some(other) = per_set[idx] {
            return Err(Error::invalid_config(format!(
                "requested IP addresses {other} and {ip} are in the same range set {idx}; one address per set"
            )));
        }
        if conf.range_sets[idx]
            .range_of(ip)
            .is_some_and(|r| r.gateway == *ip)
        {
            return Err(Error::invalid_config(format!(
                "requested IP address {ip} is the gateway of its range"
            )));
        }
        per_set[idx] = Some(*ip);
    }
    Ok(per_set)
}

fn reserve_requested(
    store: &mut Store,
    conf: &IpamConfig,
    idx: usize,
    ip: IpAddr,
    owner: &Owner,
) -> Result<()> {
    if store.try_reserve(&ip, owner)? {
        return Ok(());
    }
    let holder = match store.read_lease(&ip)? {
        Some(LeaseContent::Owned(o)) => format!("attachment {o}"),
        Some(_) => "an unreadable lease (GC reclaims it)".to_string(),
        // Released between the two calls; cannot happen under the lock, but say something true.
        None => "another attachment".to_string(),
    };
    Err(Error::failed(format!(
        "requested IP address {ip} in network {} (range set {idx}) is already allocated to {holder}",
        conf.network
    )))
}

/// After this many taken addresses in a row, list the directory once and skip addresses known to be taken.
const DENSE_RUN: usize = 32;

fn reserve_next(
    store: &mut Store,
    idx: usize,
    set: &crate::range::RangeSet,
    owner: &Owner,
) -> Result<IpAddr> {
    // Round-robin usually lands on a free address at once. When the cursor sits before a dense block (lost
    // cursor file, nearly full pool), one readdir (names only) is cheaper than a failed link(2) per lease.
    let mut taken: Option<HashSet<IpAddr>> = None;
    for (n, (_, ip)) in set.iter_from(store.last_reserved(idx)).enumerate() {
        if n == DENSE_RUN {
            taken = Some(store.leased_addresses()?.into_iter().collect());
        }
        if taken.as_ref().is_some_and(|t| t.contains(&ip)) {
            continue;
        }
        // Every writer holds the lock, so the listing is current; link(2) stays the arbiter all the same.
        if store.try_reserve(&ip, owner)? {
            return Ok(ip);
        }
    }
    let ranges: Vec<String> = set
        .ranges()
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    Err(Error::failed(format!(
        "no IP addresses available in range set {idx}: {}",
        ranges.join(",")
    )))
}
