//! The attachment index: which addresses each attachment holds, so DEL and ADD cost the same at 10 leases and
//! at 10,000 (the reference reads every lease file on both, cni-spec.md §11.4).
//!
//! Layout, in `<dataDir>/.twill/<network>/` (never inside the network directory, see [`crate::store`]):
//! * `idx/<containerID>@<hex(ifname)>`: `twill-ipam index v1` then one address per line; `idx/<containerID>@`
//!   lists legacy id-only leases of that container.
//! * `idx/.stamp`: the network directory's mtime as we left it.
//!
//! The lease files stay the only truth; the index is a cache of it, and every address read from it is checked
//! against its lease file before use. What the index can miss is a lease created by someone else: the reference
//! binary sharing the directory, an older twill, or our own process killed before it updated the index. All of
//! them change the network directory (create, unlink), and so its mtime. After each of our own changes we set
//! the directory's mtime to a value no clock will produce later (one second in the past, random nanoseconds)
//! and record it in the stamp; at the start of every operation, under the lock, a directory mtime that differs
//! from `stamp` means someone else was here, and the index is rebuilt from a full scan before it is used. A
//! crash between a change and the new stamp leaves a mismatch, so it heals the same way. The full scan is paid
//! once per foreign change, not per operation.

use crate::lease::{LeaseContent, Owner};
use crate::store::{c_path, write_atomic, write_file, LeaseEntry, Store};
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use twill_cni::{Context, Error, Result};

const HEADER: &str = "twill-ipam index v1";
/// Longest file name Linux filesystems accept.
const NAME_MAX: usize = 255;

/// The index file name of `owner`, or `None` when it would not fit in a file name (container ids longer than
/// ~220 bytes): such owners are found by scanning.
pub fn index_name(owner: &Owner) -> Option<String> {
    let mut name = format!("{}@", owner.container_id);
    if let Some(ifname) = &owner.ifname {
        for b in ifname.bytes() {
            name.push_str(&format!("{b:02x}"));
        }
    }
    (name.len() <= NAME_MAX - 16).then_some(name)
}

fn mtime_of(path: &std::path::Path) -> Result<(i64, i64)> {
    let c = c_path(path)?;
    // SAFETY: zeroed stat is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::failed(format!(
            "stat {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_mtime as i64, st.st_mtime_nsec as i64))
}

impl Store {
    fn idx_path(&self, name: &str) -> PathBuf {
        self.paths.state_dir.join("idx").join(name)
    }

    /// Inside `idx/`, so an index directory removed by hand takes its stamp with it (and a rebuild, which
    /// empties `idx/`, leaves the index untrusted until it is complete).
    fn stamp_path(&self) -> PathBuf {
        self.paths.state_dir.join("idx").join(".stamp")
    }

    /// The index describes the directory: nobody but us changed it since our last stamp.
    pub fn index_trusted(&self) -> Result<bool> {
        let now = mtime_of(&self.paths.net_dir)?;
        let stamp = match fs::read_to_string(self.stamp_path()) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::failed(format!("read index stamp: {e}"))),
        };
        let mut parts = stamp.split_whitespace().map(str::parse::<i64>);
        Ok(matches!(
            (parts.next(), parts.next()),
            (Some(Ok(s)), Some(Ok(ns))) if (s, ns) == now
        ))
    }

    /// Record that the index matches the directory as it is now. Call after our own changes, under the lock.
    pub fn restamp(&self) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let noise =
            (now.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761)) % 1_000_000_000;
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: now.as_secs().saturating_sub(1) as libc::time_t,
                tv_nsec: noise as libc::c_long,
            },
        ];
        let dir = c_path(&self.paths.net_dir)?;
        // SAFETY: valid NUL-terminated path and a two-element timespec array.
        if unsafe { libc::utimensat(libc::AT_FDCWD, dir.as_ptr(), times.as_ptr(), 0) } != 0 {
            return Err(Error::failed(format!(
                "set mtime of {}: {}",
                self.paths.net_dir.display(),
                std::io::Error::last_os_error()
            )));
        }
        // Record what the filesystem stored (it may round the nanoseconds).
        let (s, ns) = mtime_of(&self.paths.net_dir)?;
        write_atomic(&self.stamp_path(), format!("{s} {ns}\n").as_bytes())
    }

    /// Make the index trustworthy: rebuild it from a full scan when someone else changed the directory.
    /// Returns the scan when one was needed (callers that need every lease anyway can reuse it).
    pub fn ensure_index(&self) -> Result<Option<Vec<LeaseEntry>>> {
        if self.index_trusted()? {
            return Ok(None);
        }
        let entries = self.scan()?;
        self.rebuild_index(&entries)?;
        self.clear_tmp();
        self.restamp()?;
        Ok(Some(entries))
    }

    /// Replace the whole index with what `entries` say.
    pub fn rebuild_index(&self, entries: &[LeaseEntry]) -> Result<()> {
        // Untrust first: a crash part-way through must not leave a matching stamp over a partial index.
        match fs::remove_file(self.stamp_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::failed(format!("remove index stamp: {e}"))),
        }
        let dir = self.paths.state_dir.join("idx");
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e.with_context(|| format!("read {}", dir.display()))?;
            let _ = fs::remove_file(e.path());
        }
        let mut by_owner: BTreeMap<&Owner, Vec<IpAddr>> = BTreeMap::new();
        for e in entries {
            if let LeaseContent::Owned(o) = &e.content {
                by_owner.entry(o).or_default().push(e.ip);
            }
        }
        for (owner, ips) in by_owner {
            if let Some(name) = index_name(owner) {
                // The stamp is written last, so a crash here leaves the index untrusted: no rename needed.
                write_file(&self.idx_path(&name), render(&ips).as_bytes(), 0o600)?;
            }
        }
        Ok(())
    }

    /// Addresses the index lists for `owner` (unverified), or `None` when the owner cannot be indexed.
    pub fn index_lookup(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>> {
        let Some(name) = index_name(owner) else {
            return Ok(None);
        };
        let path = self.idx_path(&name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(parse(&text))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Some(Vec::new())),
            Err(e) => Err(Error::failed(format!("read {}: {e}", path.display()))),
        }
    }

    /// Set the addresses `owner` holds (empty removes its index file).
    pub fn index_write(&self, owner: &Owner, ips: &[IpAddr]) -> Result<()> {
        let Some(name) = index_name(owner) else {
            return Ok(());
        };
        let path = self.idx_path(&name);
        if ips.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::failed(format!("remove {}: {e}", path.display()))),
            };
        }
        write_atomic(&path, render(ips).as_bytes())
    }

    /// The addresses `owner` holds, verified against the lease files: from the index, or by a full scan when
    /// the owner cannot be indexed. Call [`Store::ensure_index`] first.
    pub fn held_by(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        match self.index_lookup(owner)? {
            Some(ips) => {
                let mut held = Vec::new();
                for ip in ips {
                    if self.read_lease(&ip)?.is_some_and(|c| c.is_owned_by(owner))
                        && !held.contains(&ip)
                    {
                        held.push(ip);
                    }
                }
                Ok(held)
            }
            None => Ok(self
                .scan()?
                .into_iter()
                .filter(|e| e.content.is_owned_by(owner))
                .map(|e| e.ip)
                .collect()),
        }
    }
}

fn render(ips: &[IpAddr]) -> String {
    let mut s = String::from(HEADER);
    s.push('\n');
    for ip in ips {
        s.push_str(&ip.to_string());
        s.push('\n');
    }
    s
}

fn parse(text: &str) -> Vec<IpAddr> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Vec::new();
    }
    lines.filter_map(|l| l.trim().parse().ok()).collect()
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
    fn index_names_cannot_collide_between_attachments() {
        assert_eq!(index_name(&Owner::new("c", "eth0")).unwrap(), "c@65746830");
        assert_eq!(index_name(&Owner::legacy("c")).unwrap(), "c@");
        assert_ne!(
            index_name(&Owner::new("c", "e")),
            index_name(&Owner::new("c@65", ""))
        );
        assert!(index_name(&Owner::new(&"x".repeat(300), "eth0")).is_none());
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
        s.restamp().unwrap();
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
                            s.restamp().unwrap();
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
                                s.restamp().unwrap();
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
    fn unindexable_owners_are_found_by_scanning() {
        let (_d, s) = store();
        let long = Owner::new(&"x".repeat(300), "eth0");
        let ip: IpAddr = "10.0.0.6".parse().unwrap();
        fs::write(s.paths.lease(&ip), long.to_content()).unwrap();
        s.ensure_index().unwrap();
        assert_eq!(s.held_by(&long).unwrap(), vec![ip]);
    }
}
