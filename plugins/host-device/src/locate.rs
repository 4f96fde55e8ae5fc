//! Finding the node's device from the configured selector, as the reference does: by name, by
//! hardware address (any link whose address equals it), or through sysfs (the first entry of the
//! `net` directory of a kernel device path, a PCI device (or its virtio child), or an auxiliary
//! device).

use std::path::{Component, Path};

use twill_cni::{Error, Result};
use twill_kernel::{Handle, LinkDetails};

use crate::config::{Selector, SYS_BUS_AUXILIARY, SYS_BUS_PCI};

/// An I/O error as Go prints it (`no such file or directory`), without Rust's ` (os error 2)`.
pub fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn not_found() -> Error {
    Error::failed("Link not found")
}

fn by_name(h: &Handle, name: &str) -> Result<LinkDetails> {
    h.link_details_by_name(name).map_err(|e| {
        if e.is_not_found() || e.errno() == Some(libc::EINVAL) || e.errno() == Some(libc::ERANGE) {
            not_found()
        } else {
            Error::failed(e.to_string())
        }
    })
}

/// A hardware address in any form Go's `net.ParseMAC` accepts: 6, 8 or 20 octets, separated by `:` or
/// `-`, or dotted groups of four hex digits.
pub fn parse_hw_addr(text: &str) -> Option<Vec<u8>> {
    let hex = |s: &str| u8::from_str_radix(s, 16).ok();
    let valid_len = |n: usize| matches!(n, 6 | 8 | 20);
    if text.contains('.') {
        let groups: Vec<&str> = text.split('.').collect();
        if !valid_len(groups.len() * 2) || groups.iter().any(|g| g.len() != 4) {
            return None;
        }
        let mut out = Vec::new();
        for g in groups {
            out.push(hex(&g[..2])?);
            out.push(hex(&g[2..])?);
        }
        return Some(out);
    }
    let sep = if text.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = text.split(sep).collect();
    if !valid_len(parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    parts.iter().map(|p| hex(p)).collect()
}

/// The link named by the first entry (in name order) of the sysfs directory `dir`.
fn from_net_dir(h: &Handle, dir: &Path) -> Result<LinkDetails> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::failed(format!(
            "failed to read directory {}: \"open {}: {}\"",
            dir.display(),
            dir.display(),
            os_error_text(&e)
        ))
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match names.first() {
        Some(name) => by_name(h, name),
        None => Err(Error::failed(format!(
            "failed to find network device in path {}",
            dir.display()
        ))),
    }
}

/// A kernel device path must be absolute, under `/sys/devices/`, and (unlike the reference, which
/// cleans `..` away and so can be led anywhere) free of `.` and `..` components.
fn kernel_path_ok(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && path.starts_with("/sys/devices/")
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The node device `selector` names, looked up through `h` (a socket in the node's namespace).
pub fn find(h: &Handle, selector: &Selector) -> Result<LinkDetails> {
    match selector {
        Selector::Name(name) => by_name(h, name),
        Selector::HwAddr(text) => {
            let wanted = parse_hw_addr(text).ok_or_else(|| {
                Error::failed(format!(
                    "failed to parse MAC address {text:?}: address {text}: invalid MAC address"
                ))
            })?;
            let links = h
                .link_details()
                .map_err(|e| Error::failed(format!("failed to list node links: {e}")))?;
            links
                .into_iter()
                .find(|l| l.hw_addr == wanted)
                .ok_or_else(|| Error::failed("failed to find physical interface"))
        }
        Selector::KernelPath(path) => {
            if !kernel_path_ok(path) {
                return Err(Error::failed(format!(
                    "kernel device path {path:?} must be absolute and begin with /sys/devices/"
                )));
            }
            from_net_dir(h, &Path::new(path).join("net"))
        }
        Selector::Pci(pci) => {
            let dev = Path::new(SYS_BUS_PCI).join(pci);
            let net = dev.join("net");
            if std::fs::symlink_metadata(&net).is_ok() {
                return from_net_dir(h, &net);
            }
            // A virtio NIC's netdev hangs off its virtio child device.
            let mut virtio: Vec<_> = std::fs::read_dir(&dev)
                .map(|it| {
                    it.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("virtio") && dev.join(n).join("net").exists())
                        .collect()
                })
                .unwrap_or_default();
            virtio.sort();
            match virtio.first() {
                Some(child) => from_net_dir(h, &dev.join(child).join("net")),
                None => Err(Error::failed(format!(
                    "no net directory under pci device {pci}"
                ))),
            }
        }
        Selector::Auxiliary(aux) => {
            from_net_dir(h, &Path::new(SYS_BUS_AUXILIARY).join(aux).join("net"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_addresses_parse_as_go_does() {
        assert_eq!(
            parse_hw_addr("02:aa:bb:cc:dd:ee"),
            Some(vec![2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(
            parse_hw_addr("02-AA-bb-cc-dd-ee"),
            Some(vec![2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(
            parse_hw_addr("02aa.bbcc.ddee"),
            Some(vec![2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(
            parse_hw_addr("02:aa:bb:cc:dd:ee:ff:00").map(|v| v.len()),
            Some(8)
        );
        for bad in [
            "",
            "02:aa:bb:cc:dd",
            "02:aa:bb:cc:dd:eg",
            "2:aa:bb:cc:dd:ee",
            "zz",
        ] {
            assert_eq!(parse_hw_addr(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kernel_paths_stay_under_sys_devices() {
        assert!(kernel_path_ok(
            "/sys/devices/pci0000:00/0000:00:03.0/virtio2"
        ));
        for bad in [
            "sys/devices/x",
            "/sys/class/net/eth0",
            "/sys/devices/../../etc",
        ] {
            assert!(!kernel_path_ok(bad), "{bad:?}");
        }
    }
}
