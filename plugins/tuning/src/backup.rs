//! The original link attributes, saved by ADD and restored by DEL, in the reference's on-disk format:
//! `<dataDir>/<containerID>_<ifname>.json`, a JSON object with `mac`, `promisc`, `mtu`, `allmulti`,
//! `txQLen` (only those ADD changed), indented with one space. The reference reads our files and we read
//! its files. One key is ours: `network`, the network that wrote the file, which GC needs (the default
//! `dataDir` is shared by every network, and a GC must only touch its own network's files); the reference
//! ignores it, and a file without it is never garbage-collected.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use twill_cni::{Error, Result};
use twill_kernel::{Handle, Link, LinkChange, MacAddr};

use crate::config::TuningConf;

/// The saved attributes; field order and names as the reference writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    pub txqlen: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `<dataDir>/<containerID>_<ifname>.json`.
pub fn path(data_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    data_dir.join(format!("{container_id}_{ifname}.json"))
}

impl Saved {
    /// What ADD is about to change, as the link has it now.
    pub fn of(link: &Link, conf: &TuningConf, network: &str) -> Saved {
        Saved {
            mac: match (&conf.mac, link.mac) {
                (Some(_), Some(m)) => m.to_string(),
                _ => String::new(),
            },
            promisc: conf.promisc.then_some(link.promisc),
            mtu: if conf.mtu.is_some() { link.mtu } else { 0 },
            allmulti: conf.allmulti.map(|_| link.allmulti),
            txqlen: conf.txqlen.map(|_| link.txqlen),
            network: Some(network.to_string()),
        }
    }

    /// The reference's `json.MarshalIndent(config, "", " ")`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .map_err(|e| Error::failed(format!("failed to marshal backup: {e}")))?;
        Ok(out)
    }

    /// Write the copy under a temporary name and rename it into place, so a reader (DEL, GC, the
    /// reference) never sees half a file. Not fsync'd: the copy only matters while the pod's link exists,
    /// which a reboot ends (the default directory is on tmpfs anyway).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .ok_or_else(|| Error::failed(format!("{} names no directory", path.display())))?;
        twill_files::create_missing_dirs(dir, 0o700)
            .map_err(|e| Error::failed(format!("failed to create backup directory: {e}")))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let bytes = self.to_bytes()?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::failed(format!(
                "failed to save file {}: {e}",
                path.display()
            )));
        }
        Ok(())
    }

    /// The saved file; `None` when there is none or it cannot be read as a backup (the reference then
    /// restores nothing).
    pub fn load(path: &Path) -> Option<Saved> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Put the saved attributes back on the link, in one request.
    pub fn restore(&self, h: &Handle, index: u32) -> Result<()> {
        let mac = match self.mac.as_str() {
            "" => None,
            m => Some(
                m.parse::<MacAddr>()
                    .map_err(|e| Error::failed(format!("failed to restore MAC address: {e}")))?,
            ),
        };
        let changes = LinkChange {
            up: None,
            mac,
            mtu: (self.mtu != 0).then_some(self.mtu),
            promisc: self.promisc,
            allmulti: self.allmulti,
            txqlen: self.txqlen,
        };
        h.change_link(index, &changes)
            .map_err(|e| Error::failed(format!("failed to restore {changes:?}: {e}")))
    }
}

/// Remove `path`; already gone is fine.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::failed(format!(
            "failed to remove file {}: {e}",
            path.display()
        ))),
    }
}

/// GC: the backups `network` wrote for attachments not in `keep` (their links are gone with their pods, so
/// there is nothing left to restore). Files of other networks, and the reference's, are left alone.
pub fn gc(data_dir: &Path, network: &str, keep: &[(String, String)]) -> Result<()> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::failed(format!("list {}: {e}", data_dir.display()))),
    };
    let kept: Vec<String> = keep
        .iter()
        .map(|(id, ifname)| format!("{id}_{ifname}.json"))
        .collect();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') || kept.contains(&name) {
            continue;
        }
        let path = entry.path();
        if Saved::load(&path).and_then(|s| s.network).as_deref() != Some(network) {
            continue;
        }
        if let Err(e) = remove(&path) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_the_reference_one() {
        let s = Saved {
            mac: "02:00:00:00:00:01".into(),
            promisc: Some(false),
            mtu: 1500,
            allmulti: Some(true),
            txqlen: Some(1000),
            network: None,
        };
        assert_eq!(
            String::from_utf8(s.to_bytes().unwrap()).unwrap(),
            "{\n \"mac\": \"02:00:00:00:00:01\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": true,\n \"txQLen\": 1000\n}"
        );
        let only_mtu = Saved {
            mtu: 9000,
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(only_mtu.to_bytes().unwrap()).unwrap(),
            "{\n \"mtu\": 9000\n}"
        );
    }

    #[test]
    fn gc_removes_only_this_networks_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let mine = |id: &str| {
            Saved {
                mtu: 1500,
                network: Some("net1".into()),
                ..Default::default()
            }
            .save(&path(dir.path(), id, "eth0"))
            .unwrap()
        };
        mine("keep");
        mine("stale");
        Saved {
            mtu: 1500,
            network: Some("net2".into()),
            ..Default::default()
        }
        .save(&path(dir.path(), "other", "eth0"))
        .unwrap();
        std::fs::write(
            path(dir.path(), "reference", "eth0"),
            "{\n \"mtu\": 1500\n}",
        )
        .unwrap();
        gc(dir.path(), "net1", &[("keep".into(), "eth0".into())]).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["keep_eth0.json", "other_eth0.json", "reference_eth0.json"]
        );
    }
}
