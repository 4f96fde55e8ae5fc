//! The on-disk store, byte-compatible with the reference (docs/cni-spec-notes.md §11.2): `<dataDir>/<network>/<ip>`
//! holds `<containerID>\r\n<ifname>`, `last_reserved_ip.<N>` the last address handed out from range set N, and `lock`
//! is taken with `flock(LOCK_EX)` by every writer, ours and the reference's alike.
//!
//! Crash safety: a lease is created by writing its content to a temporary file first and then `link(2)`ing it
//! to the address's name. `link` fails when the name exists, so the file appears atomically, already naming
//! its owner: a SIGKILL at any point can leave at worst an orphaned temporary file, never an empty lease,
//! never two owners of one address.
//!
//! Our extra state (the attachment index, see [`crate::index`]) lives outside the network directory, in
//! `<dataDir>/.twill/<network>/`, because the reference walks the network directory recursively and would
//! read (and on DEL, delete) anything in it whose content looks like a lease. A network name can never start
//! with a dot, so `.twill` cannot clash with a network.
//!
//! Symbolic links: anyone who can write into the dataDir could plant a link where we write state and make
//! ADD overwrite the link's target. The directories we create (`<network>`, `.twill`, `.twill/<network>`,
//! `idx`, `tmp`) must be real directories, or the operation fails naming the link; every file we write is
//! opened with `O_NOFOLLOW`, so a link at a file's name makes that write fail instead of writing through it.
//! The dataDir itself may be a link, as with the reference: it is the operator's configuration.

use crate::lease::{LeaseContent, Owner};
use std::cell::Cell;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use twill_cni::{Context, Error, NetworkName, Result};

/// Name of the lock file inside the network directory (go-filemutex on the directory).
pub const LOCK_FILE: &str = "lock";
/// Prefix of the per-range-set round-robin cursor files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Directory under dataDir holding twill's own state, one sub-directory per network.
pub const STATE_DIR: &str = ".twill";
/// The reference writes lease files with mode 0644 (observed with Debian's host-local).
const LEASE_MODE: u32 = 0o644;

/// Where a network's files live.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `<dataDir>/<network>`: leases, `lock`, `last_reserved_ip.*` (shared with the reference).
    pub net_dir: PathBuf,
    /// `<dataDir>/.twill/<network>`: our index, stamp and temporary files.
    pub state_dir: PathBuf,
}

impl Paths {
    /// The paths for `network` under `data_dir`. The name was validated by twill-cni (one path component,
    /// no leading dot); we check again that joining it cannot leave `data_dir`.
    pub fn new(data_dir: &Path, network: &NetworkName) -> Result<Paths> {
        let name = Path::new(network.as_str());
        let mut components = name.components();
        if !matches!(
            (components.next(), components.next()),
            (Some(Component::Normal(_)), None)
        ) || network.as_str().starts_with('.')
        {
            return Err(Error::invalid_config(format!(
                "network name {network:?} cannot be used as a directory name"
            )));
        }
        Ok(Paths {
            net_dir: data_dir.join(name),
            state_dir: data_dir.join(STATE_DIR).join(name),
        })
    }

    pub fn lease(&self, ip: &IpAddr) -> PathBuf {
        self.net_dir.join(ip.to_string())
    }

    pub fn last_reserved(&self, set: usize) -> PathBuf {
        self.net_dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))
    }
}

/// One entry of the network directory that names an address.
#[derive(Debug, Clone)]
pub struct LeaseEntry {
    pub ip: IpAddr,
    pub content: LeaseContent,
}

/// An open store holding the network's lock; the lock is released when the store is dropped.
#[derive(Debug)]
pub struct Store {
    pub paths: Paths,
    _lock: File,
    /// A temporary file holding the lease content of the owner it was written for.
    tmp_lease: Option<(PathBuf, Owner)>,
    /// Known to disagree with the directory: we changed the directory (or untrusted the stamp) since the
    /// last stamp, so the index may be rewritten in place ([`crate::index`]).
    pub(crate) stamp_stale: Cell<bool>,
}

fn mkdir_p(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("create directory {}", dir.display()))
}

fn dir_is_link(dir: &Path) -> Error {
    Error::failed(format!(
        "{} is a symbolic link; host-local keeps no state behind links (replace it by a directory)",
        dir.display()
    ))
}

/// Create `dir` (one level; its parent must exist) unless it exists, then make sure it is a real directory,
/// so nothing is ever created below a planted link.
fn mkdir_owned(dir: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::failed(format!(
                "create directory {}: {e}",
                dir.display()
            )))
        }
    }
    require_real_dir(dir)
}

/// Create the network directory if needed. The dataDir is the operator's (it may be a link, as the reference
/// allows); the network directory below it is ours and must be a real directory.
pub fn create_net_dir(paths: &Paths) -> Result<()> {
    if let Some(data_dir) = paths.net_dir.parent() {
        mkdir_p(data_dir, 0o755)?;
    }
    mkdir_owned(&paths.net_dir, 0o755)
}

/// Create our state directories (`.twill/<network>/{idx,tmp}`) if needed, one level at a time, each a real
/// directory.
pub fn create_state_dirs(paths: &Paths) -> Result<()> {
    if let Some(twill_dir) = paths.state_dir.parent() {
        mkdir_owned(twill_dir, 0o700)?;
    }
    mkdir_owned(&paths.state_dir, 0o700)?;
    mkdir_owned(&paths.state_dir.join("idx"), 0o700)?;
    mkdir_owned(&paths.state_dir.join("tmp"), 0o700)
}

/// Fail unless `dir` is a directory itself, not a symbolic link to one: we write into it.
fn require_real_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(dir_is_link(dir)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::failed(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(e) => Err(Error::failed(format!("stat {}: {e}", dir.display()))),
    }
}

/// Options opening a file for writing without following a symbolic link at its name (`ELOOP` instead).
fn write_options(mode: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).mode(mode).custom_flags(libc::O_NOFOLLOW);
    o
}

/// The error for opening `path` for writing, naming a planted link as such.
fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Error::failed(format!(
            "{} is a symbolic link; host-local does not write through links (remove it)",
            path.display()
        ))
    } else {
        Error::failed(format!("open {}: {e}", path.display()))
    }
}

fn flock_exclusive(file: &File, path: &Path) -> Result<()> {
    loop {
        // SAFETY: flock on a valid, open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(Error::failed(format!("lock {}: {e}", path.display())));
        }
    }
}

impl Store {
    /// Create the directories if needed and take the network's lock.
    pub fn open(paths: Paths) -> Result<Store> {
        create_net_dir(&paths)?;
        Store::lock(paths)
    }

    /// Take the lock of an existing network; `None` when the network directory does not exist (nothing was
    /// ever allocated there, so DEL and GC have nothing to do and must not create state).
    pub fn open_existing(paths: Paths) -> Result<Option<Store>> {
        match fs::symlink_metadata(&paths.net_dir) {
            Ok(m) if m.file_type().is_symlink() => Err(dir_is_link(&paths.net_dir)),
            Ok(m) if m.is_dir() => Store::lock(paths).map(Some),
            Ok(_) => Err(Error::failed(format!(
                "{} is not a directory",
                paths.net_dir.display()
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::failed(format!(
                "stat {}: {e}",
                paths.net_dir.display()
            ))),
        }
    }

    fn lock(paths: Paths) -> Result<Store> {
        require_real_dir(&paths.net_dir)?;
        let lock_path = paths.net_dir.join(LOCK_FILE);
        let lock = write_options(0o644)
            .read(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| open_error(&lock_path, e))?;
        flock_exclusive(&lock, &lock_path)?;
        create_state_dirs(&paths)?;
        Ok(Store {
            paths,
            _lock: lock,
            tmp_lease: None,
            stamp_stale: Cell::new(false),
        })
    }

    /// The lease at `ip`: `None` when the address is free.
    pub fn read_lease(&self, ip: &IpAddr) -> Result<Option<LeaseContent>> {
        read_lease(&self.paths, ip)
    }

    /// Every entry of the network directory whose name is an address, with its content. Other names (`lock`,
    /// `last_reserved_ip.*`, anything unknown) are not leases and are never returned.
    pub fn scan(&self) -> Result<Vec<LeaseEntry>> {
        let dir = &self.paths.net_dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let content = match fs::read(entry.path()) {
                Ok(bytes) => LeaseContent::parse(&bytes),
                // Released between readdir and read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(_) => LeaseContent::Unreadable,
            };
            out.push(LeaseEntry { ip, content });
        }
        Ok(out)
    }

    /// Names of the directory's entries that are addresses (no file reads: for counting).
    pub fn leased_addresses(&self) -> Result<Vec<IpAddr>> {
        leased_addresses(&self.paths.net_dir)
    }

    /// Reserve `ip` for `owner`: `Ok(true)` when the lease was created, `Ok(false)` when the address is taken.
    pub fn try_reserve(&mut self, ip: &IpAddr, owner: &Owner) -> Result<bool> {
        let target = self.paths.lease(ip);
        let tmp = self.tmp_lease(owner)?;
        match fs::hard_link(&tmp, &target) {
            Ok(()) => {
                self.stamp_stale.set(true);
                // Each lease gets its own inode: the next reservation writes a fresh temporary file.
                let _ = fs::remove_file(&tmp);
                self.tmp_lease = None;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // dataDir/<network> is a separate mount: keep the temporary file beside the leases instead
                // (hidden name, not an address, so neither we nor the reference treat it as a lease).
                let _ = fs::remove_file(&tmp);
                let local = self
                    .paths
                    .net_dir
                    .join(format!(".twill-lease.{}", std::process::id()));
                create_fresh(&local, owner.to_content().as_bytes(), LEASE_MODE)?;
                self.tmp_lease = Some((local, owner.clone()));
                self.try_reserve(ip, owner)
            }
            Err(e) => Err(Error::failed(format!(
                "create lease {}: {e}",
                target.display()
            ))),
        }
    }

    /// A temporary file already holding the owner's lease content, reused for every link attempt.
    fn tmp_lease(&mut self, owner: &Owner) -> Result<PathBuf> {
        match &self.tmp_lease {
            Some((p, o)) if o == owner && p.exists() => return Ok(p.clone()),
            Some((p, _)) => {
                let _ = fs::remove_file(p);
            }
            None => {}
        }
        let path = self
            .paths
            .state_dir
            .join("tmp")
            .join(format!("lease.{}", std::process::id()));
        create_fresh(&path, owner.to_content().as_bytes(), LEASE_MODE)?;
        self.tmp_lease = Some((path.clone(), owner.clone()));
        Ok(path)
    }

    /// Remove the lease at `ip`; a missing file is not an error (DEL is idempotent).
    pub fn release(&self, ip: &IpAddr) -> Result<()> {
        let path = self.paths.lease(ip);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.stamp_stale.set(true);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(format!("release {}: {e}", path.display()))),
        }
    }

    /// The round-robin cursor of range set `set`; unreadable or garbage content restarts the set, as in the
    /// reference ("we just lose round-robin this one time").
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.paths.last_reserved(set))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The same bytes as the reference (`os.WriteFile`, no newline), written over the old cursor in place. A
    /// writer killed between the write and the truncation leaves a longer, still parseable address: the
    /// cursor then only steers round-robin wrongly once, as a lost cursor does.
    pub fn set_last_reserved(&self, set: usize, ip: &IpAddr) -> Result<()> {
        overwrite_mode(
            &self.paths.last_reserved(set),
            ip.to_string().as_bytes(),
            0o666,
        )
    }

    /// Whether the stamp is known to disagree with the directory (a lease was created or released, or the
    /// index was rewritten, since the last stamp): the caller should [`Store::restamp`].
    pub fn stamp_stale(&self) -> bool {
        self.stamp_stale.get()
    }

    /// Remove our orphaned temporary files (only possible under the lock: every writer holds it).
    pub fn clear_tmp(&self) {
        let dir = self.paths.state_dir.join("tmp");
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        if let Ok(entries) = fs::read_dir(&self.paths.net_dir) {
            for e in entries.flatten() {
                if e.file_name().as_bytes().starts_with(b".twill-lease.") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.tmp_lease.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Lockless read of one lease (CHECK reads single files; a lease appears and disappears atomically).
pub fn read_lease(paths: &Paths, ip: &IpAddr) -> Result<Option<LeaseContent>> {
    let path = paths.lease(ip);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(LeaseContent::parse(&bytes))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(Some(LeaseContent::Unreadable)),
        Err(e) => Err(Error::failed(format!("read {}: {e}", path.display()))),
    }
}

/// Names in `dir` that are addresses.
pub fn leased_addresses(dir: &Path) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        if let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<IpAddr>().ok())
        {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Create or truncate `path` with `mode` and write `bytes`; a symbolic link at `path` is an error.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = write_options(mode)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    f.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

/// Write a new file at a name private to this process (a temporary file): whatever is at the name (a
/// leftover of a killed process with our pid, or a planted link) is removed, not written through.
fn create_fresh(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::failed(format!("remove {}: {e}", path.display()))),
    }
    let mut f = write_options(mode)
        .create_new(true)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    f.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

/// Replace the content of `path` (created with mode 0600 if missing) in place: no new inode when it exists.
/// Not atomic: only for files whose readers tolerate a torn write (see [`crate::index`]).
pub fn overwrite(path: &Path, bytes: &[u8]) -> Result<()> {
    overwrite_mode(path, bytes, 0o600)
}

fn overwrite_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let f = write_options(mode)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    // Overwrite, then cut: the block stays allocated instead of being freed by O_TRUNC and allocated again.
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0)
        .with_context(|| format!("write {}", path.display()))?;
    f.set_len(bytes.len() as u64)
        .with_context(|| format!("truncate {}", path.display()))
}

/// `path` as a C string for raw syscalls.
pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::failed(format!("path {} contains a NUL byte", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str) -> NetworkName {
        NetworkName::parse(name).unwrap()
    }

    #[test]
    fn network_paths_stay_inside_data_dir() {
        let p = Paths::new(Path::new("/d"), &net("cbr0")).unwrap();
        assert_eq!(p.net_dir, Path::new("/d/cbr0"));
        assert_eq!(p.state_dir, Path::new("/d/.twill/cbr0"));
        assert_eq!(
            p.lease(&"fd00::1".parse().unwrap()),
            Path::new("/d/cbr0/fd00::1")
        );
        assert_eq!(p.last_reserved(1), Path::new("/d/cbr0/last_reserved_ip.1"));
    }

    #[test]
    fn reserve_is_exclusive_and_writes_reference_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), &net("n")).unwrap();
        let mut a = Store::open(paths.clone()).unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(a.try_reserve(&ip, &Owner::new("c1", "eth0")).unwrap());
        assert!(!a.try_reserve(&ip, &Owner::new("c1", "eth0")).unwrap());
        assert_eq!(fs::read(paths.lease(&ip)).unwrap(), b"c1\r\neth0");
        let mode = fs::metadata(paths.lease(&ip)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
        a.set_last_reserved(0, &ip).unwrap();
        assert_eq!(fs::read(paths.last_reserved(0)).unwrap(), b"10.0.0.2");
        assert_eq!(a.last_reserved(0), Some(ip));
        let scanned = a.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        a.release(&ip).unwrap();
        a.release(&ip).unwrap();
        drop(a);
        let names: Vec<String> = fs::read_dir(&paths.net_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, vec!["last_reserved_ip.0", "lock"]);
    }

    #[test]
    fn scan_ignores_non_address_names_and_reports_empty_leases() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), &net("n")).unwrap();
        let s = Store::open(paths.clone()).unwrap();
        fs::write(paths.net_dir.join("10.0.0.9"), b"").unwrap();
        fs::write(paths.net_dir.join("10.0.0.8"), b"old-id").unwrap();
        fs::write(paths.net_dir.join("garbage"), b"c\r\neth0").unwrap();
        fs::create_dir(paths.net_dir.join("10.0.0.7")).unwrap();
        let mut found: Vec<(String, LeaseContent)> = s
            .scan()
            .unwrap()
            .into_iter()
            .map(|e| (e.ip.to_string(), e.content))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            vec![
                (
                    "10.0.0.8".to_string(),
                    LeaseContent::Owned(Owner::legacy("old-id"))
                ),
                ("10.0.0.9".to_string(), LeaseContent::Empty),
            ]
        );
    }

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), &net("n")).unwrap();
        assert!(Store::open_existing(paths.clone()).unwrap().is_none());
        assert!(!paths.net_dir.exists());
    }
}
