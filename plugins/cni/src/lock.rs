//! Locks shared by plugin processes: `flock` on small files, released by the kernel when the last descriptor
//! closes, so a killed plugin cannot leave one held.
//!
//! The attachment lock serialises every verb on one attachment (network + container id + ifname). The
//! runtime should never overlap ADD and DEL of one attachment, but a retried kubelet operation can; without
//! the lock an ADD and a DEL interleave into "interface configured but no lease" or duplicated masquerade
//! rules. The lock file is one of a fixed set of buckets chosen by a hash of the attachment (two attachments
//! sharing a bucket merely wait for each other), so `/run` never fills with per-pod files.
//!
//! Lock descriptors are inherited by the helpers a plugin runs ([`crate::child`]), so a lock is held until
//! the helpers are gone as well. A plugin run by another plugin that holds the same attachment lock (flannel
//! running bridge) is told so in its environment, and does not wait for a lock its parent holds forever.

use crate::error::{Error, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Directory of the attachment lock files.
pub const DEFAULT_DIR: &str = "/run/twill/locks";
/// Overrides [`DEFAULT_DIR`] (tests, read-only `/run`).
pub const DIR_ENV: &str = "TWILL_LOCK_DIR";
/// Set for a helper run while an attachment lock is held: `<lock file>:<inherited fd>`.
pub const HELD_ENV: &str = "TWILL_ATTACHMENT_LOCK";
/// Number of attachment lock files.
const BUCKETS: u64 = 4096;

/// An exclusive `flock` held until dropped (and until every helper that inherited it has exited).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until `path` (created 0600 if missing, never through a symbolic link) is locked by us.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::failed(format!("create lock directory {}: {e}", dir.display()))
            })?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| Error::failed(format!("open lock {}: {e}", path.display())))?;
        let lock = FileLock::lock(file, path)?;
        // Inherited across exec by the helpers we run: see the module comment.
        let _ = fcntl(&lock.file, FcntlArg::F_SETFD(FdFlag::empty()));
        Ok(lock)
    }

    /// Blocks until the existing file `path` (never created: e.g. a network namespace's bind mount, which
    /// the reference plugins lock too) is locked by us. Not inherited by helpers.
    pub fn existing(path: &Path) -> Result<FileLock> {
        let file = File::open(path)
            .map_err(|e| Error::failed(format!("failed to open {:?}: {e}", path.display())))?;
        FileLock::lock(file, path)
    }

    fn lock(file: File, path: &Path) -> Result<FileLock> {
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(Error::failed(format!("lock {}: {e}", path.display())));
            }
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The lock of one attachment; `None` inside when a parent plugin holds it for us.
#[derive(Debug)]
pub struct AttachmentLock(Option<FileLock>);

/// The attachment lock held by this process, exported to helpers: (lock file, fd).
static HELD: Mutex<Option<(PathBuf, RawFd)>> = Mutex::new(None);

fn lock_dir() -> PathBuf {
    std::env::var_os(DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// FNV-1a over the three names, NUL-separated (no name contains NUL): stable across versions, which
/// processes of different versions sharing a node need.
fn bucket(network: &str, container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [network, container_id, ifname].join("\0").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % BUCKETS
}

/// Whether an ancestor told us it holds the lock at `path` and the descriptor it named, inherited by us,
/// really is that file.
fn held_by_parent(path: &Path) -> bool {
    let Some(v) = std::env::var_os(HELD_ENV) else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((p, fd)) = v.rsplit_once(':') else {
        return false;
    };
    let Ok(fd) = fd.parse::<RawFd>() else {
        return false;
    };
    if Path::new(p) != path {
        return false;
    }
    // SAFETY: `stat` is plain integers, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any descriptor number is safe (a closed one fails with EBADF) and writes only
    // into `st`, which is a whole `stat`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.dev() == st.st_dev as u64 && m.ino() == st.st_ino as u64)
}

impl AttachmentLock {
    /// The lock of the attachment a request names (network, container id, ifname).
    pub fn of(req: &crate::Request) -> Result<AttachmentLock> {
        AttachmentLock::acquire(
            req.config.name.as_str(),
            req.container_id()?.as_str(),
            req.ifname()?.as_str(),
        )
    }

    /// Blocks until the attachment is ours (or returns at once when the plugin that runs us holds it).
    pub fn acquire(network: &str, container_id: &str, ifname: &str) -> Result<AttachmentLock> {
        let path = lock_dir().join(format!(
            "attachment-{:03x}",
            bucket(network, container_id, ifname)
        ));
        if held_by_parent(&path) {
            return Ok(AttachmentLock(None));
        }
        let lock = FileLock::exclusive(&path)?;
        if let Ok(mut held) = HELD.lock() {
            *held = Some((path, lock.raw_fd()));
        }
        Ok(AttachmentLock(Some(lock)))
    }
}

impl Drop for AttachmentLock {
    fn drop(&mut self) {
        if self.0.is_some() {
            if let Ok(mut held) = HELD.lock() {
                *held = None;
            }
        }
    }
}

/// Tell a helper about the attachment lock this process holds (see [`crate::child::bind_to_parent`]).
pub(crate) fn export_held(cmd: &mut Command) {
    if let Ok(held) = HELD.lock() {
        if let Some((path, fd)) = held.as_ref() {
            cmd.env(HELD_ENV, format!("{}:{fd}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_map_to_stable_buckets() {
        assert_eq!(bucket("n", "c", "eth0"), bucket("n", "c", "eth0"));
        assert_ne!(bucket("n", "c", "eth0"), bucket("n", "c", "eth1"));
        assert!(bucket("n", "c", "eth0") < BUCKETS);
    }

    #[test]
    fn a_lock_not_named_by_a_parent_is_not_assumed_held() {
        assert!(!held_by_parent(Path::new("/nonexistent/attachment-000")));
    }
}
