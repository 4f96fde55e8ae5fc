//! Kernel parameters under `/proc/sys`, per namespace.
//!
//! `/proc/sys/net/*` resolves against the network namespace of the thread that opens the file, so a
//! sysctl for another namespace is read and written from a thread inside it ([`NetNs::run`]).

use std::io;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// A key is a path below `/proc/sys` with `/` separators, e.g. `net/ipv4/ip_forward` or
/// `net/ipv4/conf/flannel.1/forwarding` (dots are not separators: interface names contain them).
fn key_path(key: &str) -> io::Result<PathBuf> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl key: {why}"),
        )
    };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.starts_with('/') {
        return Err(invalid("leading '/'"));
    }
    if key.contains('\0') {
        return Err(invalid("NUL byte"));
    }
    // Interface names inside keys come from user config; the caller validates them, but a name like
    // ".." must still never let a write escape /proc/sys.
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid("empty, '.' or '..' component"));
        }
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

fn read_here(key: &str) -> io::Result<String> {
    let path = key_path(key)?;
    let raw = std::fs::read_to_string(path)?;
    Ok(raw.trim_end().to_string())
}

fn write_here(key: &str, value: &str) -> io::Result<bool> {
    let path = key_path(key)?;
    let current = std::fs::read_to_string(&path)?;
    if current.trim() == value.trim() {
        return Ok(false);
    }
    std::fs::write(&path, value.as_bytes())?;
    Ok(true)
}

/// Reads a sysctl in the calling thread's namespace (trailing newline removed).
pub fn read(key: &str) -> Result<String> {
    read_here(key).map_err(|e| Error::new("read sysctl", key, "current netns", e))
}

/// Writes a sysctl in the calling thread's namespace, only when the value differs (writes are
/// slower than reads and some are not idempotent). Returns whether it wrote.
pub fn write(key: &str, value: &str) -> Result<bool> {
    write_here(key, value)
        .map_err(|e| Error::new("write sysctl", format!("{key}={value}"), "current netns", e))
}

/// Writes a sysctl in the calling thread's namespace without reading it first. For keys of a device just
/// created, which hold the namespace default and are about to change anyway: one procfs lookup and read less
/// than [`write`]. Only for keys whose write is cheap and idempotent (`accept_ra`, `accept_dad`, `arp_notify`).
pub fn set(key: &str, value: &str) -> Result<()> {
    key_path(key)
        .and_then(|path| std::fs::write(path, value.as_bytes()))
        .map_err(|e| Error::new("write sysctl", format!("{key}={value}"), "current netns", e))
}

/// Reads a sysctl inside `netns`.
pub fn read_in(netns: &NetNs, key: &str) -> Result<String> {
    netns
        .run(|| read_here(key))?
        .map_err(|e| Error::new("read sysctl", key, netns.label(), e))
}

/// Writes a sysctl inside `netns` when the value differs; returns whether it wrote.
pub fn write_in(netns: &NetNs, key: &str, value: &str) -> Result<bool> {
    netns
        .run(|| write_here(key, value))?
        .map_err(|e| Error::new("write sysctl", format!("{key}={value}"), netns.label(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation_rejects_escapes() {
        for bad in [
            "",
            "/net/ipv4/ip_forward",
            "net/../../etc/passwd",
            "net//x",
            "net/./x",
            "net/ipv4/conf/../x",
            "a\0b",
        ] {
            assert!(key_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            key_path("net/ipv4/conf/flannel.1/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/flannel.1/forwarding")
        );
    }
}
