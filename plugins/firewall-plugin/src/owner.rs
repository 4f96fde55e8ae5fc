//! Which attachment a rule belongs to, written into the rule's comment: `twill-firewall <network
//! hash>-<attachment hash>`. DEL finds its rules without `prevResult`, and GC finds the rules of a
//! network whose attachments are gone, from a listing alone.

use twill_firewall::hash::sha512_hex;

pub const COMMENT_PREFIX: &str = "twill-firewall ";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    network: String,
    tag: String,
}

/// The first half of every tag of `network`.
pub fn network_tag(network: &str) -> String {
    sha512_hex(format!("firewall\0{network}").as_bytes(), 16)
}

impl Owner {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Owner {
        let own = sha512_hex(
            format!("{network}\0{container_id}\0{ifname}").as_bytes(),
            16,
        );
        Owner {
            network: network.to_string(),
            tag: format!("{}-{own}", network_tag(network)),
        }
    }

    /// The rule comment.
    pub fn comment(&self) -> String {
        format!("{COMMENT_PREFIX}{}", self.tag)
    }
}

/// The tag in a rule comment (or listing line) we wrote, if any.
pub fn tag_in(text: &str) -> Option<&str> {
    let start = text.find(COMMENT_PREFIX)? + COMMENT_PREFIX.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|t| t.len() == 33)
}

/// Whether `tag` belongs to `network`.
pub fn tag_of_network(tag: &str, network: &str) -> bool {
    tag.starts_with(&format!("{}-", network_tag(network)))
}

impl Owner {
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_found_in_a_listing_line() {
        let o = Owner::new("net", "cid", "eth0");
        let line = format!(
            "-A CNI-FORWARD -s 10.0.0.2/32 -m comment --comment \"{}\" -j ACCEPT",
            o.comment()
        );
        assert_eq!(tag_in(&line), Some(o.tag()));
        assert!(tag_of_network(o.tag(), "net"));
        assert!(!tag_of_network(o.tag(), "other"));
        assert_ne!(Owner::new("net", "cid", "eth1").tag(), o.tag());
    }
}
