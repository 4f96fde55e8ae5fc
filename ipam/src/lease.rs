//! The content of a lease file (docs/cni-spec-notes.md §11.2): `<containerID>\r\n<ifname>` with no trailing newline, or
//! just `<containerID>` as very old reference versions wrote. The reference compares the whitespace-trimmed
//! content, so we parse the same way.

use std::fmt;

/// Line separator between container id and ifname in a lease file (the reference's `LineBreak`).
pub const LINE_BREAK: &str = "\r\n";

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    /// `None` for a legacy id-only lease: it belongs to every ifname of that container.
    pub ifname: Option<String>,
}

/// What a lease file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseContent {
    Owned(Owner),
    /// Empty: a writer died between create and write (the reference creates first, then writes).
    Empty,
    /// Not a lease we can attribute (not UTF-8, too many lines, whitespace inside a field).
    Unreadable,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Owner {
        Owner {
            container_id: container_id.to_string(),
            ifname: Some(ifname.to_string()),
        }
    }

    pub fn legacy(container_id: &str) -> Owner {
        Owner {
            container_id: container_id.to_string(),
            ifname: None,
        }
    }

    /// The exact bytes the reference writes.
    pub fn to_content(&self) -> String {
        match &self.ifname {
            Some(ifname) => format!("{}{LINE_BREAK}{ifname}", self.container_id.trim()),
            None => self.container_id.trim().to_string(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ifname {
            Some(i) => write!(f, "{}/{i}", self.container_id),
            None => write!(f, "{} (legacy lease without ifname)", self.container_id),
        }
    }
}

impl LeaseContent {
    pub fn parse(bytes: &[u8]) -> LeaseContent {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return LeaseContent::Unreadable;
        };
        let text = text.trim();
        if text.is_empty() {
            return LeaseContent::Empty;
        }
        let field_ok =
            |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        match text.split_once(LINE_BREAK) {
            Some((id, ifname)) if field_ok(id) && field_ok(ifname) => {
                LeaseContent::Owned(Owner::new(id, ifname))
            }
            Some(_) => LeaseContent::Unreadable,
            None if field_ok(text) => LeaseContent::Owned(Owner::legacy(text)),
            None => LeaseContent::Unreadable,
        }
    }

    /// Held by exactly this attachment (new format).
    pub fn is_owned_by(&self, owner: &Owner) -> bool {
        matches!(self, LeaseContent::Owned(o) if o == owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_bytes_round_trip() {
        let o = Owner::new("c1", "eth0");
        assert_eq!(o.to_content(), "c1\r\neth0");
        assert_eq!(LeaseContent::parse(b"c1\r\neth0"), LeaseContent::Owned(o));
        assert_eq!(
            LeaseContent::parse(b"c1\n"),
            LeaseContent::Owned(Owner::legacy("c1"))
        );
        assert_eq!(LeaseContent::parse(b""), LeaseContent::Empty);
        assert_eq!(LeaseContent::parse(b" \n"), LeaseContent::Empty);
        assert_eq!(LeaseContent::parse(b"\xff\xfe"), LeaseContent::Unreadable);
        assert_eq!(LeaseContent::parse(b"a b"), LeaseContent::Unreadable);
        assert_eq!(
            LeaseContent::parse(b"a\r\nb\r\nc"),
            LeaseContent::Unreadable
        );
    }

    proptest! {
        #[test]
        fn written_content_parses_back(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,70}", ifname in "[a-zA-Z0-9@._-]{1,15}") {
            let o = Owner::new(&id, &ifname);
            prop_assert_eq!(LeaseContent::parse(o.to_content().as_bytes()), LeaseContent::Owned(o));
        }
    }
}
