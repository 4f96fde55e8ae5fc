//! The attachment index: which addresses each attachment holds, so DEL and ADD cost the same at 10 leases and
//! at 10,000 (the reference reads every lease file on both, docs/cni-spec-notes.md §11.4).
//!
//! Layout, in `<dataDir>/.twill/<network>/idx/` (never inside the network directory, see [`crate::store`]):
//! * 256 bucket files `b00`..`bff`: `twill-ipam index v2`, then `<key> <address>` lines, where the key is
//!   `<containerID>@<hex(ifname)>` (`<containerID>@` for legacy id-only leases) and the bucket is a hash of the
//!   key. A lookup or update reads and rewrites one bucket: about 40 lines at 10,000 leases. Buckets rather
//!   than one file per attachment keep a rebuild at 256 small writes instead of one file creation per lease.
//! * `.stamp`: an empty file whose own mtime is the network directory's mtime as we left it.
//!
//! The lease files stay the only truth; the index is a cache of it, and every address read from it is checked
//! against its lease file before use. What the index can miss is a lease created by someone else: the reference
//! binary sharing the directory, an older twill, or our own process killed before it updated the index. All of
//! them change the network directory (create, unlink), and so its mtime. After each of our own changes we set
//! the directory's mtime to a value no clock will produce later (one second in the past, random nanoseconds)
//! and copy it onto the stamp; at the start of every operation, under the lock, a directory mtime that differs
//! from the stamp's means someone else was here, and the index is brought up to date from a full scan before
//! it is used (only buckets that differ are rewritten). A crash between a change and the new stamp leaves a
//! mismatch, so it heals the same way. The full scan, about what the reference pays on every ADD and DEL, is
//! paid once per foreign change, not per operation.
//!
//! Buckets are rewritten in place and the stamp is only ever touched with `utimensat`: an ADD creates no file
//! but its lease (on ext4 every inode creation searches for a reusable inode, and the temporary-file-and-rename
//! this replaced cost two creations and two deletions per ADD). In-place writes are not atomic, so a bucket is
//! only rewritten while the stamp already disagrees with the directory ([`Store::untrust`]): a process killed
//! mid-write leaves an index that the next operation rebuilds from the leases before using it.

use crate::lease::{LeaseContent, Owner};
use crate::store::{c_path, overwrite, LeaseEntry, Store};
use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use twill_cni::{Context, Error, Result};

const HEADER: &str = "twill-ipam index v2";
/// Number of bucket files.
pub const BUCKETS: usize = 256;

/// The index key of `owner`: no whitespace (container ids and hex never contain any), one `@`.
pub fn index_key(owner: &Owner) -> String {
    let mut key = format!("{}@", owner.container_id);
    if let Some(ifname) = &owner.ifname {
        for b in ifname.bytes() {
            key.push_str(&format!("{b:02x}"));
        }
    }
    key
}

/// FNV-1a: stable across versions and platforms, which a bucket choice must be.
pub fn bucket_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

fn bucket_name(b: usize) -> String {
    format!("b{b:02x}")
}

/// `(key, address)` lines of a bucket.
type Lines = Vec<(String, IpAddr)>;

fn render(lines: &Lines) -> String {
    let mut s = String::from(HEADER);
    s.push('\n');
    for (key, ip) in lines {
        s.push_str(key);
        s.push(' ');
        s.push_str(&ip.to_string());
        s.push('\n');
    }
    s
}

fn parse(text: &str) -> Lines {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Vec::new();
    }
    lines
        .filter_map(|l| {
            let (key, ip) = l.split_once(' ')?;
            Some((key.to_string(), ip.trim().parse().ok()?))
        })
        .collect()
}

/// A stamp value no directory carries: what an untrusted stamp is set to.
const UNTRUSTED: (i64, i64) = (0, 0);

/// `path`'s mtime; `None` when it does not exist.
fn mtime_of(path: &Path) -> Result<Option<(i64, i64)>> {
    // lstat: a link planted at the stamp is judged by itself, never by its target.
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some((m.mtime(), m.mtime_nsec()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::failed(format!("stat {}: {e}", path.display()))),
    }
}

/// Set `path`'s mtime (atime untouched); `Ok(false)` when it does not exist.
fn set_mtime(path: &Path, (sec, nsec): (i64, i64)) -> Result<bool> {
    let c = c_path(path)?;
    let mtime = TimeSpec::new(sec as _, nsec as _);
    // AT_SYMLINK_NOFOLLOW: a link planted at the stamp gets its own time changed, not its target's.
    match utimensat(
        AT_FDCWD,
        c.as_c_str(),
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::failed(format!(
            "set mtime of {}: {}",
            path.display(),
            std::io::Error::from(e)
        ))),
    }
}

impl Store {
    fn idx_dir(&self) -> PathBuf {
        self.paths.state_dir.join("idx")
    }

    fn bucket_path(&self, b: usize) -> PathBuf {
        self.idx_dir().join(bucket_name(b))
    }

    /// Inside `idx/`, so an index directory removed by hand takes its stamp with it.
    fn stamp_path(&self) -> PathBuf {
        self.idx_dir().join(".stamp")
    }

    fn read_bucket(&self, b: usize) -> Result<Lines> {
        let path = self.bucket_path(b);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse(&text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::failed(format!("read {}: {e}", path.display()))),
        }
    }

    /// The index describes the directory: nobody but us changed it since our last stamp.
    pub fn index_trusted(&self) -> Result<bool> {
        let Some(now) = mtime_of(&self.paths.net_dir)? else {
            return Err(Error::failed(format!(
                "stat {}: no such directory",
                self.paths.net_dir.display()
            )));
        };
        let stamp = mtime_of(&self.stamp_path())?;
        Ok(stamp == Some(now) && now != UNTRUSTED)
    }

    /// Make the stamp disagree with the directory before an in-place write to the index, unless one of our
    /// own changes to the directory already did. A missing stamp is as good as an untrusted one.
    pub(crate) fn untrust(&self) -> Result<()> {
        if !self.stamp_stale.get() {
            set_mtime(&self.stamp_path(), UNTRUSTED)?;
            self.stamp_stale.set(true);
        }
        Ok(())
    }

    /// Record that the index matches the directory as it is now. Call after our own changes, under the lock,
    /// once the index reflects them. Failing here is harmless: the directory's mtime then differs from the
    /// stamp (our own change moved it), so the next operation rescans; the error is only reported on stderr.
    pub fn restamp(&self) {
        if let Err(e) = self.try_restamp() {
            eprintln!("host-local: index stamp not updated (next operation rescans): {e}");
        }
    }

    fn try_restamp(&self) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let noise =
            (now.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761)) % 1_000_000_000;
        let wanted = (now.as_secs().saturating_sub(1) as i64, i64::from(noise));
        if !set_mtime(&self.paths.net_dir, wanted)? {
            return Err(Error::failed(format!(
                "{} disappeared",
                self.paths.net_dir.display()
            )));
        }
        // Record what the filesystem stored (it may round the nanoseconds).
        let stored = mtime_of(&self.paths.net_dir)?.ok_or_else(|| {
            Error::failed(format!("{} disappeared", self.paths.net_dir.display()))
        })?;
        let stamp = self.stamp_path();
        if !set_mtime(&stamp, stored)? {
            // First stamp (or after a rebuild removed it): created once, then only its mtime changes.
            overwrite(&stamp, b"")?;
            set_mtime(&stamp, stored)?;
        }
        self.stamp_stale.set(false);
        Ok(())
    }

    /// Make the index trustworthy: bring it up to date from a full scan when someone else changed the
    /// directory. Returns the scan when one was needed.
    pub fn ensure_index(&self) -> Result<Option<Vec<LeaseEntry>>> {
        if self.index_trusted()? {
            return Ok(None);
        }
        let entries = self.scan()?;
        self.rebuild_index(&entries)?;
        self.clear_tmp();
        self.restamp();
        Ok(Some(entries))
    }

    /// Make the index say exactly what `entries` say, rewriting only the buckets that differ.
    pub fn rebuild_index(&self, entries: &[LeaseEntry]) -> Result<()> {
        // Untrust first: a crash part-way through must not leave a matching stamp over a partial index.
        match fs::remove_file(self.stamp_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::failed(format!("remove index stamp: {e}"))),
        }
        self.stamp_stale.set(true);
        let mut wanted: Vec<Lines> = vec![Vec::new(); BUCKETS];
        for e in entries {
            if let LeaseContent::Owned(o) = &e.content {
                let key = index_key(o);
                wanted[bucket_of(&key)].push((key, e.ip));
            }
        }
        // idx/ is ours alone (0700): anything in it that is not a regular file, such as a planted link, is
        // removed before the buckets are written.
        let dir = self.idx_dir();
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e.with_context(|| format!("read {}", dir.display()))?;
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
        for (b, mut lines) in wanted.into_iter().enumerate() {
            lines.sort();
            let mut have = self.read_bucket(b)?;
            have.sort();
            if have != lines {
                overwrite(&self.bucket_path(b), render(&lines).as_bytes())?;
            }
        }
        // Anything else in idx/ (temporary files of killed writers, older layouts) goes.
        let dir = self.idx_dir();
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e.with_context(|| format!("read {}", dir.display()))?;
            let name = e.file_name();
            let keep = name.to_str().is_some_and(|n| {
                n.len() == 3 && n.starts_with('b') && u8::from_str_radix(&n[1..], 16).is_ok()
            });
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Addresses the index lists for `owner` (unverified).
    pub fn index_lookup(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let key = index_key(owner);
        Ok(self
            .read_bucket(bucket_of(&key))?
            .into_iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, ip)| ip)
            .collect())
    }

    /// Set the addresses `owner` holds (empty forgets it).
    pub fn index_write(&self, owner: &Owner, ips: &[IpAddr]) -> Result<()> {
        let key = index_key(owner);
        let b = bucket_of(&key);
        let have = self.read_bucket(b)?;
        let mut lines: Lines = have.iter().filter(|(k, _)| *k != key).cloned().collect();
        for ip in ips {
            if !lines.iter().any(|(k, i)| *k == key && i == ip) {
                lines.push((key.clone(), *ip));
            }
        }
        if lines == have {
            return Ok(());
        }
        self.untrust()?;
        overwrite(&self.bucket_path(b), render(&lines).as_bytes())
    }

    /// The addresses `owner` holds, verified against the lease files. Call [`Store::ensure_index`] first.
    pub fn held_by(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let mut held = Vec::new();
        for ip in self.index_lookup(owner)? {
            if self.read_lease(&ip)?.is_some_and(|c| c.is_owned_by(owner)) && !held.contains(&ip) {
                held.push(ip);
            }
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Paths;
    use proptest::prelude::*;
    use twill_cni::NetworkName;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), &NetworkName::parse("n").unwrap()).unwrap();
        let s = Store::open(paths).unwrap();
        (dir, s)
    }

    #[test]
    fn index_keys_cannot_collide_between_attachments() {
        assert_eq!(index_key(&Owner::new("c", "eth0")), "c@65746830");
        assert_eq!(index_key(&Owner::legacy("c")), "c@");
        assert_ne!(
            index_key(&Owner::new("c", "e")),
            index_key(&Owner::legacy("c@65"))
        );
        assert!(bucket_of("c@65746830") < BUCKETS);
    }

    #[test]
    fn a_fresh_directory_is_untrusted_until_stamped() {
        let (_d, s) = store();
        assert!(!s.index_trusted().unwrap());
        assert!(s.ensure_index().unwrap().is_some());
        assert!(s.index_trusted().unwrap());
        assert!(s.ensure_index().unwrap().is_none());
    }

    #[test]
    fn a_foreign_lease_makes_the_index_untrusted_and_is_indexed() {
        let (_d, s) = store();
        s.ensure_index().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        // What the reference does: O_EXCL create of the lease in the network directory.
        fs::write(s.paths.lease(&ip), b"ref\r\neth0").unwrap();
        assert!(!s.index_trusted().unwrap());
        s.ensure_index().unwrap();
        assert_eq!(s.held_by(&Owner::new("ref", "eth0")).unwrap(), vec![ip]);
        // A foreign release: the stale index entry is not trusted blindly.
        s.restamp();
        fs::remove_file(s.paths.lease(&ip)).unwrap();
        fs::write(s.paths.lease(&ip), b"other\r\neth0").unwrap();
        assert!(s.held_by(&Owner::new("ref", "eth0")).unwrap().is_empty());
    }

    /// One step against a shared network directory: ours (with the index kept up to date, or "crashed" before
    /// the index and stamp were written), or a foreign writer that knows nothing of the index.
    #[derive(Debug, Clone)]
    enum Step {
        OurReserve { owner: usize, ip: u8, crash: bool },
        OurRelease { owner: usize, crash: bool },
        ForeignCreate { owner: usize, ip: u8 },
        ForeignRemove { ip: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..4usize, 0..12u8, any::<bool>()).prop_map(|(owner, ip, crash)| Step::OurReserve {
                owner,
                ip,
                crash
            }),
            (0..4usize, any::<bool>()).prop_map(|(owner, crash)| Step::OurRelease { owner, crash }),
            (0..4usize, 0..12u8).prop_map(|(owner, ip)| Step::ForeignCreate { owner, ip }),
            (0..12u8).prop_map(|ip| Step::ForeignRemove { ip }),
        ]
    }

    fn owner_n(n: usize) -> Owner {
        Owner::new(&format!("c{n}"), "eth0")
    }

    fn addr(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n + 2])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever mix of our operations, crashes and foreign writers came before, once the index is ensured
        /// it answers exactly what a full scan of the lease files answers, for every owner.
        #[test]
        fn index_answers_like_a_full_scan_after_any_history(steps in proptest::collection::vec(step(), 1..24)) {
            let (_d, mut s) = store();
            for st in &steps {
                s.ensure_index().unwrap();
                match *st {
                    Step::OurReserve { owner, ip, crash } => {
                        let o = owner_n(owner);
                        if s.try_reserve(&addr(ip), &o).unwrap() && !crash {
                            let mut held = s.held_by(&o).unwrap();
                            held.push(addr(ip));
                            s.index_write(&o, &held).unwrap();
                            s.restamp();
                        }
                    }
                    Step::OurRelease { owner, crash } => {
                        let o = owner_n(owner);
                        let held = s.held_by(&o).unwrap();
                        for ip in &held {
                            s.release(ip).unwrap();
                        }
                        if !crash {
                            s.index_write(&o, &[]).unwrap();
                            if !held.is_empty() {
                                s.restamp();
                            }
                        }
                    }
                    Step::ForeignCreate { owner, ip } => {
                        let path = s.paths.lease(&addr(ip));
                        if !path.exists() {
                            fs::write(path, owner_n(owner).to_content()).unwrap();
                        }
                    }
                    Step::ForeignRemove { ip } => {
                        let _ = fs::remove_file(s.paths.lease(&addr(ip)));
                    }
                }
                s.ensure_index().unwrap();
                let truth = s.scan().unwrap();
                for n in 0..4 {
                    let o = owner_n(n);
                    let mut want: Vec<IpAddr> = truth.iter().filter(|e| e.content.is_owned_by(&o)).map(|e| e.ip).collect();
                    let mut got = s.held_by(&o).unwrap();
                    want.sort();
                    got.sort();
                    proptest::prop_assert_eq!(got, want, "owner c{} after {:?}", n, st);
                }
            }
        }
    }

    #[test]
    fn an_index_rewrite_without_a_lease_change_is_untrusted_until_restamped() {
        let (_d, s) = store();
        s.ensure_index().unwrap();
        let paths = s.paths.clone();
        drop(s);
        // A later operation that rewrites a bucket but changes no lease (a stale entry forgotten): a kill
        // mid-write must not leave a torn bucket behind a matching stamp.
        let s = Store::open(paths).unwrap();
        assert!(s.index_trusted().unwrap());
        let ip: IpAddr = "10.0.0.8".parse().unwrap();
        s.index_write(&Owner::new("x", "eth0"), &[ip]).unwrap();
        assert!(!s.index_trusted().unwrap());
        assert!(s.stamp_stale());
        s.restamp();
        assert!(s.index_trusted().unwrap());
    }

    #[test]
    fn buckets_and_stamp_keep_their_inodes() {
        use std::os::unix::fs::MetadataExt;
        let (_d, mut s) = store();
        s.ensure_index().unwrap();
        let o = Owner::new("c", "eth0");
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        assert!(s.try_reserve(&a, &o).unwrap());
        s.index_write(&o, &[a]).unwrap();
        s.restamp();
        let bucket = s.bucket_path(bucket_of(&index_key(&o)));
        let inodes = |s: &Store| {
            (
                fs::metadata(&bucket).unwrap().ino(),
                fs::metadata(s.stamp_path()).unwrap().ino(),
            )
        };
        let before = inodes(&s);
        assert!(s.try_reserve(&b, &o).unwrap());
        s.index_write(&o, &[a, b]).unwrap();
        s.restamp();
        assert_eq!(inodes(&s), before);
        assert_eq!(s.index_lookup(&o).unwrap(), vec![a, b]);
        assert!(s.index_trusted().unwrap());
    }

    #[test]
    fn long_container_ids_are_indexed() {
        let (_d, s) = store();
        let long = Owner::new(&"x".repeat(300), "eth0");
        let ip: IpAddr = "10.0.0.6".parse().unwrap();
        fs::write(s.paths.lease(&ip), long.to_content()).unwrap();
        s.ensure_index().unwrap();
        assert_eq!(s.held_by(&long).unwrap(), vec![ip]);
    }

    #[test]
    fn a_rebuild_rewrites_only_buckets_that_differ_and_drops_strays() {
        let (_d, s) = store();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        fs::write(s.paths.lease(&ip), "a\r\neth0").unwrap();
        fs::write(s.idx_dir().join("old-layout@65746830"), "x").unwrap();
        s.ensure_index().unwrap();
        let names: Vec<String> = fs::read_dir(s.idx_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.contains(&"old-layout@65746830".to_string()),
            "{names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| n.starts_with('b')).count(),
            1,
            "{names:?}"
        );
    }
}
