//! Who owns a set of masquerade rules, and how that identity is written into the firewall.

use crate::error::{Error, Result};
use crate::hash::sha512_hex;

/// The attachment a rule belongs to: CNI network name, container id and interface name. This
/// triple is what CNI DEL and GC name, so it is all teardown needs (docs/architecture.md, owner-keyed firewall state).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(
        network: impl Into<String>,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Owner {
        Owner {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("network name", &self.network),
            ("container id", &self.container_id),
            ("interface name", &self.ifname),
        ] {
            if v.is_empty() || v.contains('\0') {
                return Err(Error::Invalid(format!(
                    "masquerade owner: {what} {v:?} must be non-empty and contain no NUL"
                )));
            }
        }
        Ok(())
    }

    fn digest_input(&self) -> Vec<u8> {
        // NUL separators: none of the three can contain NUL, so distinct owners never collide by
        // concatenation ("ab"+"c" vs "a"+"bc").
        format!("{}\0{}\0{}", self.network, self.container_id, self.ifname).into_bytes()
    }

    /// `<16 hex of H(network)>-<16 hex of H(network, container id, ifname)>`: the prefix every
    /// rule comment of this owner starts with. GC finds a network's rules by the first half.
    pub(crate) fn tag(&self) -> String {
        format!(
            "{}-{}",
            network_tag(&self.network),
            sha512_hex(&self.digest_input(), 16)
        )
    }

    /// The owner's iptables chain: `CNI-` + 24 hex (28 chars, the iptables name limit), the same
    /// shape as the reference's `utils.FormatChainName`. Its first 16 hex digits are the second
    /// half of [`Owner::tag`], which lets GC map a tag to its chain.
    pub(crate) fn chain(&self) -> String {
        format!("CNI-{}", sha512_hex(&self.digest_input(), 24))
    }

    /// The rule comment: tag first (matching is by prefix), then readable names for people
    /// reading `nft list` / `iptables -S`, cut to `max` bytes.
    pub(crate) fn comment(&self, max: usize) -> String {
        let mut c = format!(
            "{} net: {} if: {} id: {}",
            self.tag(),
            printable(&self.network),
            printable(&self.ifname),
            printable(&self.container_id)
        );
        if c.len() > max {
            let mut cut = max;
            while !c.is_char_boundary(cut) {
                cut -= 1;
            }
            c.truncate(cut);
        }
        c
    }
}

/// 16 hex digits identifying a network in rule comments.
pub(crate) fn network_tag(network: &str) -> String {
    sha512_hex(network.as_bytes(), 16)
}

/// Names as they may appear inside a quoted comment: no quotes, backslashes or control chars.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@/+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `comment` belongs to the owner with `tag` (the tag is followed by a space or ends).
pub(crate) fn comment_has_tag(comment: &str, tag: &str) -> bool {
    comment
        .strip_prefix(tag)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// The owner tag inside `text` for network tag `net_tag`: `<net_tag>-<16 hex>`.
pub(crate) fn find_tag(text: &str, net_tag: &str) -> Option<String> {
    let prefix = format!("{net_tag}-");
    let start = text.find(&prefix)?;
    let tail = &text[start + prefix.len()..];
    let hex: String = tail.chars().take(16).collect();
    if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(format!("{prefix}{hex}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_stable_and_distinguishes_every_part() {
        let a = Owner::new("net", "c1", "eth0");
        assert_eq!(a.tag(), Owner::new("net", "c1", "eth0").tag());
        assert_ne!(a.tag(), Owner::new("net", "c1", "eth1").tag());
        assert_ne!(a.tag(), Owner::new("net", "c2", "eth0").tag());
        assert_ne!(a.tag(), Owner::new("net2", "c1", "eth0").tag());
        assert_ne!(
            Owner::new("ab", "c", "e").tag(),
            Owner::new("a", "bc", "e").tag()
        );
        assert!(a.tag().starts_with(&network_tag("net")));
        assert_eq!(a.tag().len(), 33);
    }

    #[test]
    fn chain_is_28_chars_and_starts_with_the_tag_hash() {
        let a = Owner::new("net", "c1", "eth0");
        let chain = a.chain();
        assert_eq!(chain.len(), 28);
        assert!(chain.starts_with(&format!("CNI-{}", &a.tag()[17..])));
    }

    #[test]
    fn comment_is_bounded_and_quote_free() {
        let a = Owner::new("net\"x", "c".repeat(200), "eth0");
        let c = a.comment(128);
        assert!(c.len() <= 128);
        assert!(!c.contains('"'));
        assert!(comment_has_tag(&c, &a.tag()));
        assert_eq!(find_tag(&c, &network_tag("net\"x")), Some(a.tag()));
    }

    #[test]
    fn tag_match_needs_a_boundary() {
        assert!(comment_has_tag("abc def", "abc"));
        assert!(comment_has_tag("abc", "abc"));
        assert!(!comment_has_tag("abcd", "abc"));
    }
}
