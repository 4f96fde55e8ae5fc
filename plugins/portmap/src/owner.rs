//! Who a rule belongs to. Every rule we add carries a comment naming its attachment — (network, container id,
//! ifname), the identity docs/cni-spec-notes.md §4 gives an attachment — and, for the DNAT rule, the host socket it
//! claims. The ruleset itself is therefore the state: DEL needs neither `runtimeConfig` nor the netns, GC can tell
//! which attachments are gone, and a conflicting ADD can name the owner, all from what the kernel holds.
//!
//! Comment: `<owner> <claim>`, owner `net/id/ifname` (none of the three may contain `/` or spaces), claim
//! `proto/hostIP-or-*/port`. nft's comment limit is 128 bytes, so a long owner is shortened to a stable
//! hashed form `#<hash(net)>/<id prefix>~<hash(owner)>/<ifname>` (FNV-1a: must never change between releases,
//! or DEL after an upgrade would miss rules).

use crate::config::{PortMapping, Protocol};
use std::fmt;
use std::net::IpAddr;

/// Longest owner kept verbatim; with the longest claim (`sctp/<v6 address>/65535`) the comment stays < 128.
const MAX_PLAIN_OWNER: usize = 74;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Owner {
        let full = format!("{network}/{container_id}/{ifname}");
        if full.len() <= MAX_PLAIN_OWNER {
            return Owner(full);
        }
        let id_prefix: String = container_id.chars().take(24).collect();
        Owner(format!(
            "{}/{id_prefix}~{:016x}/{ifname}",
            hashed_network(network),
            fnv1a(full.as_bytes())
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this owner belongs to `network` (for GC, which must never touch other networks' rules).
    pub fn in_network(&self, network: &str) -> bool {
        let seg = self.0.split('/').next().unwrap_or_default();
        seg == network || seg == hashed_network(network)
    }

    /// For error messages: "container <id> interface <if> (network <net>)".
    pub fn describe(&self) -> String {
        let parts: Vec<&str> = self.0.split('/').collect();
        match parts.as_slice() {
            [net, id, ifname] if net.starts_with('#') => {
                let id = id.split('~').next().unwrap_or(id);
                format!("container {id}… interface {ifname} (network hash {net})")
            }
            [net, id, ifname] => format!("container {id} interface {ifname} (network {net})"),
            _ => self.0.clone(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hashed_network(network: &str) -> String {
    format!("#{:016x}", fnv1a(network.as_bytes()))
}

/// FNV-1a 64: tiny, and fixed forever (unlike std's DefaultHasher, whose algorithm may change).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A host socket a DNAT rule takes: protocol, host address (`None` = every local address) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
}

impl Claim {
    pub fn of(m: &PortMapping) -> Claim {
        Claim {
            protocol: m.protocol,
            host_ip: m.host_ip,
            host_port: m.host_port,
        }
    }

    /// Both would capture the same packets: same protocol and port, and host addresses equal or either one
    /// "every address".
    pub fn overlaps(&self, other: &Claim) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// For error messages: "tcp port 8080 on every host address".
    pub fn describe(&self) -> String {
        match self.host_ip {
            Some(ip) => format!(
                "{} port {} on host address {ip}",
                self.protocol.as_str(),
                self.host_port
            ),
            None => format!(
                "{} port {} on every host address",
                self.protocol.as_str(),
                self.host_port
            ),
        }
    }

    fn parse(s: &str) -> Option<Claim> {
        let mut it = s.split('/');
        let protocol = match it.next()? {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        };
        let host_ip = match it.next()? {
            "*" => None,
            ip => Some(ip.parse().ok()?),
        };
        let host_port = it.next()?.parse().ok()?;
        it.next().is_none().then_some(Claim {
            protocol,
            host_ip,
            host_port,
        })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{}/{ip}/{}", self.protocol.as_str(), self.host_port),
            None => write!(f, "{}/*/{}", self.protocol.as_str(), self.host_port),
        }
    }
}

/// The comment on one of our rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub owner: Owner,
    /// Set on DNAT rules only: the host socket they forward.
    pub claim: Option<Claim>,
}

impl Tag {
    pub fn comment(&self) -> String {
        match &self.claim {
            Some(c) => format!("{} {c}", self.owner),
            None => self.owner.to_string(),
        }
    }

    /// Reads a comment back; `None` for rules that are not per-attachment (base rules, other software).
    pub fn parse(comment: &str) -> Option<Tag> {
        let mut it = comment.split(' ');
        let owner = it.next()?;
        if owner.split('/').count() != 3 {
            return None;
        }
        let claim = match it.next() {
            None => None,
            Some(c) => Some(Claim::parse(c)?),
        };
        if it.next().is_some() {
            return None;
        }
        Some(Tag {
            owner: Owner(owner.to_string()),
            claim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_owners_are_kept_verbatim() {
        let o = Owner::new("kind", "abc123", "eth0");
        assert_eq!(o.as_str(), "kind/abc123/eth0");
        assert!(o.in_network("kind"));
        assert!(!o.in_network("kin"));
        assert_eq!(
            o.describe(),
            "container abc123 interface eth0 (network kind)"
        );
    }

    #[test]
    fn long_owners_are_hashed_stably_and_keep_their_network() {
        let id = "f".repeat(64);
        let o = Owner::new("a-rather-long-network-name", &id, "eth0");
        assert!(o.as_str().len() <= MAX_PLAIN_OWNER + 10, "{o}");
        assert!(o.in_network("a-rather-long-network-name"));
        assert!(!o.in_network("another-network"));
        assert_eq!(o, Owner::new("a-rather-long-network-name", &id, "eth0"));
        assert_ne!(o, Owner::new("a-rather-long-network-name", &id, "eth1"));
        // Pinned: changing the hash would orphan rules written by an older binary.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn comments_round_trip_and_stay_short() {
        let id = "0123456789abcdef".repeat(4);
        let tag = Tag {
            owner: Owner::new("cbr0", &id, "eth0"),
            claim: Some(Claim {
                protocol: Protocol::Sctp,
                host_ip: Some("fd00:1234:5678:9abc:def0:1234:5678:9abc".parse().unwrap()),
                host_port: 65535,
            }),
        };
        let c = tag.comment();
        assert!(c.len() < 128, "{} bytes: {c}", c.len());
        assert_eq!(Tag::parse(&c), Some(tag));
        let plain = Tag {
            owner: Owner::new("n", "c", "eth0"),
            claim: None,
        };
        assert_eq!(Tag::parse(&plain.comment()), Some(plain));
        assert_eq!(Tag::parse("masquerade marked"), None);
        assert_eq!(Tag::parse("n/c/eth0 tcp/*/80 extra"), None);
    }

    #[test]
    fn wildcard_claims_overlap_specific_ones() {
        let any = Claim {
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: 80,
        };
        let one = Claim {
            host_ip: Some("10.0.0.1".parse().unwrap()),
            ..any
        };
        let other = Claim {
            host_ip: Some("10.0.0.2".parse().unwrap()),
            ..any
        };
        assert!(any.overlaps(&one) && one.overlaps(&any));
        assert!(!one.overlaps(&other));
        assert!(!any.overlaps(&Claim {
            protocol: Protocol::Udp,
            ..any
        }));
    }
}
