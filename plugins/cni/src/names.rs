//! Validated names from input (docs/cni-spec-notes.md §7). Each is checked once, before it reaches a path or the
//! kernel, so code holding a `ContainerId`, `IfName` or `NetworkName` never has to wonder whether it is safe to use.

use crate::error::{Error, Result};
use std::fmt;

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: the rule libcni applies to container ids and network names. It also keeps
/// the value a single, non-hidden path component (no `/`, no leading `.` or `-`).
fn valid_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

macro_rules! name_type {
    ($name:ident) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(ContainerId);
name_type!(IfName);
name_type!(NetworkName);

impl ContainerId {
    /// Bad characters are code 4, as skel reports them: the id arrives in `CNI_CONTAINERID`.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid_env(
                "required env variables [CNI_CONTAINERID] missing",
            ));
        }
        if !valid_identifier(s) {
            return Err(Error::invalid_env("invalid characters in containerID").with_details(s));
        }
        Ok(ContainerId(s.to_string()))
    }
}

impl IfName {
    /// Linux interface names: 1..=15 bytes (IFNAMSIZ-1), not `.`/`..`, no `/`, `:` or whitespace.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid_env(
                "required env variables [CNI_IFNAME] missing",
            ));
        }
        if s.len() > 15 {
            return Err(
                Error::invalid_env("interface name is too long").with_details(format!(
                    "interface name {s:?} should be less than 16 characters"
                )),
            );
        }
        if s == "." || s == ".." {
            return Err(Error::invalid_env("interface name is . or ..").with_details(s));
        }
        if s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid_env(
                "interface name contains / or : or whitespace characters",
            )
            .with_details(s));
        }
        Ok(IfName(s.to_string()))
    }
}

impl NetworkName {
    /// Network names become directory names (host-local) and firewall identities: code 7 when invalid.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::invalid_config("missing network name"));
        }
        if !valid_identifier(s) {
            return Err(
                Error::invalid_config("invalid characters found in network name").with_details(s),
            );
        }
        Ok(NetworkName(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn container_id_rules() {
        assert!(ContainerId::parse("abc-1_2.3").is_ok());
        for bad in ["", "-abc", ".abc", "a/b", "a b", "a:b", "_x"] {
            assert_eq!(ContainerId::parse(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(IfName::parse("eth0").is_ok());
        assert!(IfName::parse("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a23456789012345x",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert_eq!(IfName::parse(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }

    #[test]
    fn network_name_rules() {
        assert!(NetworkName::parse("cbr0").is_ok());
        for bad in ["", "..", "../etc", "a/b", "-x"] {
            assert_eq!(NetworkName::parse(bad).unwrap_err().code, 7, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_single_safe_path_components(s in "\\PC{0,40}") {
            for ok in [ContainerId::parse(&s).is_ok(), NetworkName::parse(&s).is_ok()] {
                if ok {
                    prop_assert!(!s.contains('/') && !s.starts_with('.') && !s.starts_with('-'));
                    prop_assert!(!s.is_empty() && s.is_ascii());
                }
            }
            if IfName::parse(&s).is_ok() {
                prop_assert!(s.len() <= 15 && s != "." && s != ".." && !s.contains('/') && !s.contains(':'));
                prop_assert!(!s.chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn identifier_charset_is_accepted(s in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,60}") {
            prop_assert!(ContainerId::parse(&s).is_ok());
            prop_assert!(NetworkName::parse(&s).is_ok());
        }
    }
}
