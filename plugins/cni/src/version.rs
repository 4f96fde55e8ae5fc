//! CNI spec versions this suite speaks, and the rules that depend on them (docs/cni-spec-notes.md §1, §5.2).

use crate::error::{code, Error, Result};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [Version; 7] = [
    Version::V0_1_0,
    Version::V0_2_0,
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parse a `cniVersion`. A malformed string is a decoding failure (6); a well-formed version we do not
    /// speak is "incompatible CNI versions" (1), as libcni and skel report them. An absent version means 0.1.0.
    pub fn parse(s: &str) -> Result<Version> {
        if let Some(v) = SUPPORTED.iter().find(|v| v.as_str() == s) {
            return Ok(*v);
        }
        let parts: Vec<&str> = s.split('.').collect();
        let well_formed = (1..=3).contains(&parts.len())
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(Error::decoding(format!(
                "invalid cniVersion {s:?}: not a version number"
            )));
        }
        let supported: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
        Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!("config is {s:?}, plugin supports {supported:?}"),
        ))
    }

    /// 0.3.0 introduced the rich result (`interfaces`, `ips[]`); before it results are `ip4`/`ip6`.
    pub fn has_rich_result(self) -> bool {
        self >= Version::V0_3_0
    }

    /// `ips[].version` is required from 0.3.0 up to 0.4.0 and was removed in 1.0.0.
    pub fn has_ip_version_field(self) -> bool {
        (Version::V0_3_0..=Version::V0_4_0).contains(&self)
    }

    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    pub fn supports_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("0.3.1"), Ok(Version::V0_3_1));
        assert!(Version::V0_4_0 < Version::V1_0_0);
        assert_eq!(Version::parse("9.9.9").unwrap_err().code, 1);
        assert_eq!(Version::parse("1.0").unwrap_err().code, 1);
        assert_eq!(Version::parse("abc").unwrap_err().code, 6);
        assert_eq!(Version::parse("").unwrap_err().code, 6);
    }
}
