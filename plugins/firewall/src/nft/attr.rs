//! Netlink attribute (TLV) encoding and decoding. nf_tables integers in attributes are big endian
//! (`nla_get_be32` in the kernel); register *contents* (cmp/immediate data) are raw bytes.

use super::sys::{NLA_F_NESTED, NLA_TYPE_MASK};
use crate::error::{Error, Result};

const NLA_HDRLEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attributes to a byte buffer; nests are opened and closed in place.
#[derive(Debug, Default, Clone)]
pub(crate) struct AttrWriter {
    pub(crate) buf: Vec<u8>,
}

impl AttrWriter {
    pub(crate) fn new() -> Self {
        AttrWriter { buf: Vec::new() }
    }

    pub(crate) fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING`/`NLA_NUL_STRING` policies accept.
    pub(crate) fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(kind, &v)
    }

    pub(crate) fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    pub(crate) fn be64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    /// Writes a nested attribute whose content `f` produces.
    pub(crate) fn nested(&mut self, kind: u16, f: impl FnOnce(&mut AttrWriter)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        let mut inner = AttrWriter {
            buf: std::mem::take(&mut self.buf),
        };
        f(&mut inner);
        self.buf = inner.buf;
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Appends already encoded attributes as the content of a nest.
    pub(crate) fn nested_raw(&mut self, kind: u16, content: &[u8]) -> &mut Self {
        self.nested(kind, |w| w.buf.extend_from_slice(content))
    }
}

/// One decoded attribute: its type (flags stripped) and payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    pub(crate) kind: u16,
    pub(crate) value: &'a [u8],
}

impl<'a> Attr<'a> {
    pub(crate) fn be32(&self) -> Result<u32> {
        let b: [u8; 4] = self
            .value
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Protocol(format!("attribute {} too short for u32", self.kind)))?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn be64(&self) -> Result<u64> {
        let b: [u8; 8] = self
            .value
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Protocol(format!("attribute {} too short for u64", self.kind)))?;
        Ok(u64::from_be_bytes(b))
    }

    /// A string attribute, trailing NULs removed.
    pub(crate) fn string(&self) -> String {
        let end = self
            .value
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.value.len());
        String::from_utf8_lossy(&self.value[..end]).into_owned()
    }

    pub(crate) fn nested(&self) -> Result<Vec<Attr<'a>>> {
        parse(self.value)
    }
}

/// Splits a buffer of attributes.
pub(crate) fn parse(mut buf: &[u8]) -> Result<Vec<Attr<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            return Err(Error::Protocol(format!(
                "malformed netlink attribute (type {kind}, length {len}, {} bytes left)",
                buf.len()
            )));
        }
        out.push(Attr {
            kind,
            value: &buf[NLA_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The first attribute of `kind`.
pub(crate) fn find<'a>(attrs: &[Attr<'a>], kind: u16) -> Option<Attr<'a>> {
    attrs.iter().copied().find(|a| a.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut w = AttrWriter::new();
        w.str(1, "filter").nested(2, |w| {
            w.be32(1, 7).be64(2, 42);
        });
        let attrs = parse(&w.buf).unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].string(), "filter");
        let inner = attrs[1].nested().unwrap();
        assert_eq!(inner[0].be32().unwrap(), 7);
        assert_eq!(inner[1].be64().unwrap(), 42);
        assert_eq!(w.buf.len() % 4, 0);
    }

    #[test]
    fn truncated_attribute_is_an_error() {
        let mut w = AttrWriter::new();
        w.str(1, "abc");
        let buf = &w.buf[..6];
        assert!(parse(buf).is_err());
    }
}
