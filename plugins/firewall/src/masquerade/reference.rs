//! Masquerade state left by the reference bridge plugin, for nodes upgraded to twill while pods it attached
//! are still running: twill's DEL and GC of such a pod must remove the reference's rules too, or every
//! pod started before the upgrade leaks its chain and `POSTROUTING` jump.
//!
//! The reference's iptables format: in table `nat`, a chain `CNI-` + the first 24 hex digits of
//! SHA-512(`<network><containerID>`) (`utils.FormatChainName`) holding `-d <subnet> -j ACCEPT` and
//! `! -d <multicast> -j MASQUERADE`, entered from `POSTROUTING` by `-s <address> -j <chain>`; every rule
//! carries the comment `name: "<network>" id: "<containerID>"`. The chain does not name the interface: two
//! interfaces of one container on one network share it, and the reference's DEL removes it for either.
//!
//! Listing the `nat` table costs an `iptables -S` exec per family, ~5 ms each, which DEL must not pay on every
//! node for the sake of a few upgraded ones. So a family is listed only when it may hold such a chain: the
//! chain exists in nf_tables' `nat` table (where iptables-nft keeps it; one netlink dump), or the legacy
//! `nat` table is loaded (iptables-legacy, invisible to nf_tables). A node whose iptables command is missing
//! cannot hold such rules, so that is not an error.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::hash::sha512_hex;
use crate::iptables::{declared_chain, delete_line, rule_chain, Iptables, RestoreBatch};
use crate::nft::{Family, IpFamily, Nft};

const TABLE: &str = "nat";

/// The reference's chain for an attachment of `container_id` on `network`.
pub(crate) fn chain(network: &str, container_id: &str) -> String {
    format!(
        "CNI-{}",
        sha512_hex(format!("{network}{container_id}").as_bytes(), 24)
    )
}

/// The `-j` target of a `-S` rule line.
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" {
            return words.next();
        }
    }
    None
}

/// The container id in a reference comment of `network`, as `iptables -S` prints it:
/// `--comment "name: \"<network>\" id: \"<id>\""`.
fn comment_id<'a>(line: &'a str, network: &str) -> Option<&'a str> {
    let prefix = format!("name: \\\"{network}\\\" id: \\\"");
    let start = line.find(&prefix)? + prefix.len();
    let rest = &line[start..];
    rest.find("\\\"").map(|end| &rest[..end])
}

/// Whether `family`'s `nat` table may hold a chain `wanted` accepts (see the module comment). Unsure is yes.
fn may_hold(family: IpFamily, wanted: &dyn Fn(&str) -> bool) -> bool {
    let (legacy_tables, nft_family) = match family {
        IpFamily::V4 => ("/proc/net/ip_tables_names", Family::Ip),
        IpFamily::V6 => ("/proc/net/ip6_tables_names", Family::Ip6),
    };
    let legacy_nat = std::fs::read_to_string(legacy_tables)
        .map(|names| names.lines().any(|n| n.trim() == TABLE))
        .unwrap_or(false);
    if legacy_nat {
        return true;
    }
    match Nft::open().and_then(|nft| nft.list_chains(nft_family, Some(TABLE))) {
        Ok(chains) => chains.iter().any(|c| wanted(&c.name)),
        // No `nat` table in nf_tables at all.
        Err(e) if e.is_not_found() => false,
        Err(_) => true,
    }
}

/// Removes, in every family, the `POSTROUTING` jumps into the chains `select` picks from a listing, and
/// those chains. Families whose `nat` table cannot hold a chain `wanted` accepts are not listed. Returns the
/// chains removed.
fn remove(
    wanted: &dyn Fn(&str) -> bool,
    select: impl Fn(&[String]) -> HashSet<String>,
) -> Result<HashSet<String>> {
    let mut removed = HashSet::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        if family == IpFamily::V6 && !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            continue;
        }
        if !may_hold(family, wanted) {
            continue;
        }
        let ipt = Iptables::new(family);
        let lines = match ipt.list(TABLE, None) {
            Ok(lines) => lines,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        let chains = select(&lines);
        if chains.is_empty() {
            continue;
        }
        let mut batch = RestoreBatch::new();
        for line in &lines {
            if rule_chain(line) == Some("POSTROUTING")
                && jump_target(line).is_some_and(|t| chains.contains(t))
            {
                if let Some(d) = delete_line(line) {
                    batch.line(TABLE, d);
                }
            }
        }
        for line in &lines {
            if let Some(c) = declared_chain(line).filter(|c| chains.contains(*c)) {
                batch.line(TABLE, format!("-F {c}"));
                batch.line(TABLE, format!("-X {c}"));
            }
        }
        ipt.restore(&batch)?;
        removed.extend(chains);
    }
    Ok(removed)
}

/// Removes the reference's masquerade of `container_id` on `network`; nothing to remove is success.
pub(crate) fn del(network: &str, container_id: &str) -> Result<()> {
    let chain = chain(network, container_id);
    remove(&|name| name == chain, |lines| {
        let present = lines.iter().any(|l| {
            declared_chain(l) == Some(chain.as_str()) || jump_target(l) == Some(chain.as_str())
        });
        if present {
            HashSet::from([chain.clone()])
        } else {
            HashSet::new()
        }
    })
    .map(|_| ())
}

/// Removes the reference's masquerade of every container of `network` not in `keep` (container ids: the
/// reference's state does not name interfaces). Only chains whose name matches the network and the id
/// in their comment are touched. Returns how many were removed.
pub(crate) fn gc(network: &str, keep: &HashSet<&str>) -> Result<usize> {
    remove(&|name| name.starts_with("CNI-"), |lines| {
        lines
            .iter()
            .filter(|l| rule_chain(l) == Some("POSTROUTING"))
            .filter_map(|l| {
                let id = comment_id(l, network)?;
                let target = jump_target(l)?;
                (!keep.contains(id) && target == chain(network, id)).then(|| target.to_string())
            })
            .collect()
    })
    .map(|removed| removed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_is_the_reference_format_chain_name() {
        let c = chain("mynet", "abc");
        assert_eq!(c.len(), 28);
        assert_eq!(c, format!("CNI-{}", sha512_hex(b"mynetabc", 24)));
    }

    #[test]
    fn listing_lines_of_the_reference_are_understood() {
        let line = r#"-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"brnet\" id: \"c1\"" -j CNI-0123456789abcdef01234567"#;
        assert_eq!(comment_id(line, "brnet"), Some("c1"));
        assert_eq!(comment_id(line, "other"), None);
        assert_eq!(jump_target(line), Some("CNI-0123456789abcdef01234567"));
    }
}
