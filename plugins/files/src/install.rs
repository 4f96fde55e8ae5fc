//! Installing files onto a node from a container image, as the DaemonSet's init containers do (`twill-install`):
//! each file goes to a temporary name in the destination directory and is renamed over the target
//! ([`write_atomically`]), so a kubelet or runtime that execs `/opt/cni/bin/bridge`, or reads the conflist, at
//! that moment gets the old file or the new one, never half of one; and a running plugin is never written
//! to ("text file busy"): its inode is replaced, not changed.

use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::atomic::{create_missing_dirs, write_atomically, FileError};

/// Where each source goes: into `dest` as a directory when there are several sources, when `dest` is a
/// directory already, or when it ends in `/`; else `dest` is the one source's new path.
pub fn targets(sources: &[PathBuf], dest: &Path) -> Result<Vec<(PathBuf, PathBuf)>, FileError> {
    let into_dir =
        sources.len() > 1 || dest.is_dir() || dest.as_os_str().to_string_lossy().ends_with('/');
    sources
        .iter()
        .map(|src| {
            if !into_dir {
                return Ok((src.clone(), dest.to_path_buf()));
            }
            let name = src.file_name().ok_or_else(|| FileError {
                op: "install",
                path: src.clone(),
                source: io::Error::new(ErrorKind::InvalidInput, "the path names no file"),
            })?;
            Ok((src.clone(), dest.join(name)))
        })
        .collect()
}

/// Copies each source to its target (see [`targets`]) atomically, with the source's permission bits (no
/// set-id bits), creating missing directories 0755. Sources are read through symbolic links (a ConfigMap
/// volume's files are links); a link at a target is replaced, never written through. Returns the targets.
pub fn install(sources: &[PathBuf], dest: &Path) -> Result<Vec<PathBuf>, FileError> {
    let plan = targets(sources, dest)?;
    let mut done = Vec::new();
    for (src, target) in plan {
        let err = |op: &'static str, e: io::Error| FileError {
            op,
            path: src.clone(),
            source: e,
        };
        let meta = std::fs::metadata(&src).map_err(|e| err("stat", e))?;
        if !meta.is_file() {
            return Err(err(
                "install",
                io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let bytes = std::fs::read(&src).map_err(|e| err("read", e))?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_missing_dirs(dir, 0o755)?;
        }
        write_atomically(&target, &bytes, meta.permissions().mode() & 0o777)?;
        done.push(target);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn several_sources_go_into_the_directory_with_their_modes() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        let a = file(src.path(), "bridge", "new bridge", 0o755);
        let b = file(src.path(), "conf", "new conf", 0o644);
        std::fs::write(dst.path().join("bridge"), "old").expect("write");
        let done = install(&[a, b], &dst.path().join("bin")).expect("install");
        assert_eq!(done.len(), 2);
        let bridge = dst.path().join("bin/bridge");
        assert_eq!(
            std::fs::read_to_string(&bridge).expect("read"),
            "new bridge"
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&bridge), 0o755);
        assert_eq!(mode(&dst.path().join("bin/conf")), 0o644);
        assert_eq!(mode(&dst.path().join("bin")), 0o755);
    }

    #[test]
    fn one_source_is_renamed_and_read_through_a_link_and_replaces_a_link() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        let real = file(src.path(), "real.json", "{}", 0o644);
        let link = src.path().join("cni-conf.json");
        symlink(&real, &link).expect("symlink");
        let victim = file(dst.path(), "victim", "keep", 0o644);
        let target = dst.path().join("10-flannel.conflist");
        symlink(&victim, &target).expect("symlink");
        install(&[link], &target).expect("install");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "{}");
        assert!(!std::fs::symlink_metadata(&target)
            .expect("stat")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        let left: Vec<_> = std::fs::read_dir(dst.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file is left: {left:?}");
    }

    #[test]
    fn a_missing_source_fails_and_installs_nothing_after_it() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        let b = file(src.path(), "b", "b", 0o644);
        let err = install(&[src.path().join("missing"), b], dst.path()).expect_err("must fail");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!dst.path().join("b").exists());
    }
}
