//! Ethernet (link-layer) addresses.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address, displayed as `aa:bb:cc:dd:ee:ff` (the form CNI results use).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// From a netlink attribute payload; `None` unless it is exactly 6 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// All zeros: the VXLAN "default destination" FDB key used for flooding.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parse error for [`MacAddr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMacError(String);

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid MAC address {:?}", self.0)
    }
}

impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_colon_form() {
        let mac: MacAddr = "0A:58:0a:f4:00:01".parse().unwrap();
        assert_eq!(mac.0, [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x01]);
        assert_eq!(mac.to_string(), "0a:58:0a:f4:00:01");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:f4:00:01:02",
            "0a:58:0a:f4:00:1",
            "zz:58:0a:f4:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
