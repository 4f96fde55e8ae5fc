//! Replacing a file atomically and durably: the content goes to a temporary file next to the target, is
//! fsynced, renamed over the target, and the directory is fsynced, so a crash leaves the old file or the new
//! one, never a torn one, and a reader never sees a half-written file.
//!
//! Symbolic links: anyone who can write into the directory could plant a link at the temporary name and make
//! a root process write through it. The temporary name is private to this process (it carries the pid);
//! whatever is found there (a planted link, a leftover of a killed process that had our pid) is removed and
//! the file is created exclusively without following links. A link at the final name is replaced by the
//! rename, never written through.
//!
//! Directories: only the missing ones are created (with an exact mode); existing ones belong to someone else
//! (`/tmp` is 1777, `/run` is the system's) and keep their mode and owner.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed file operation: what was done, to which path, and why.
#[derive(Debug)]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl FileError {
    fn new(op: &'static str, path: &Path, source: io::Error) -> FileError {
        FileError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.raw_os_error() == Some(libc::ELOOP) {
            return write!(
                f,
                "{} is a symbolic link; not writing through it (remove it)",
                self.path.display()
            );
        }
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Replaces `path` with `bytes`, the new file having exactly `mode` whatever the umask. The directory must
/// exist (see [`create_missing_dirs`]).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let name = path.file_name().ok_or_else(|| {
        FileError::new(
            "write",
            path,
            io::Error::new(ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_fresh(&tmp, bytes, mode).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| FileError::new("rename into place", path, e))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new("fsync directory", dir, e))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates a file at a name private to this process, exclusively and without following links, and writes
/// and fsyncs `bytes`.
fn write_fresh(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(FileError::new("remove stale temporary file", path, e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
        .map_err(|e| FileError::new("create", path, e))?;
    // The umask may have narrowed the mode; a file this call created gets exactly what was asked.
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| FileError::new("chmod", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| FileError::new("write", path, e))
}

/// Creates `dir` and its missing ancestors with exactly `mode`. Directories that already exist are left
/// exactly as they are: they belong to someone else, and a program running as root must not change their
/// mode or owner.
pub fn create_missing_dirs(dir: &Path, mode: u32) -> Result<(), FileError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
        if d.exists() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(d) {
            // Only a directory this call created gets its mode fixed (the umask may have narrowed it); it is
            // opened without following links so the chmod cannot land on anything else.
            Ok(()) => OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(d)
                .and_then(|f| f.set_permissions(Permissions::from_mode(mode)))
                .map_err(|e| FileError::new("chmod new directory", d, e))?,
            // Created by someone else in the meantime: theirs, left alone.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FileError::new("create directory", d, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn replaces_the_file_with_exactly_the_mode_asked_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
        write_atomically(&path, b"newer", 0o644).unwrap();
        assert_eq!(mode(&path), 0o644);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn never_writes_through_planted_links() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let victim_mode = mode(&victim);
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("f");
        let pid = std::process::id();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".f.{pid}.tmp"))).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, b"mine", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode(&victim), victim_mode);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("absent/f");
        let e = write_atomically(&path, b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn existing_directories_keep_their_mode_and_missing_ones_get_the_mode_asked() {
        let top = tempfile::tempdir().unwrap();
        std::fs::set_permissions(top.path(), Permissions::from_mode(0o1777)).unwrap();
        create_missing_dirs(top.path(), 0o755).unwrap();
        create_missing_dirs(&top.path().join("a/b"), 0o755).unwrap();
        create_missing_dirs(&top.path().join("c"), 0o700).unwrap();
        assert_eq!(mode(top.path()), 0o1777);
        assert_eq!(mode(&top.path().join("a")), 0o755);
        assert_eq!(mode(&top.path().join("a/b")), 0o755);
        assert_eq!(mode(&top.path().join("c")), 0o700);
    }
}
