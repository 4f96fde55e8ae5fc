//! Network namespaces as explicit values.
//!
//! docs/architecture.md (namespace-scoped sockets): never setns a thread that other work runs on. Everything that must
//! happen inside a namespace runs on a short-lived thread that `setns`es, does its work and exits, so the caller's
//! thread (and any tokio worker) stays where it was.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::error::{Error, Result};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The current thread's network namespace. `/proc/self` would name the main thread's, which is not
/// the same inside [`NetNs::run`].
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// An open network namespace: the fd keeps it alive (even once its bind mount is removed) for as
/// long as this value lives.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    /// (st_dev, st_ino) of the nsfs inode: two handles to the same namespace compare equal.
    id: (u64, u64),
}

impl NetNs {
    /// Opens the namespace bound at `path` (e.g. `/run/netns/x`, `/proc/<pid>/ns/net`, or the
    /// runtime's `CNI_NETNS`). A missing path gives an error with [`Error::is_not_found`] true, so
    /// DEL can succeed when the namespace is already gone; a path that exists but is not a network
    /// namespace gives an `InvalidInput` error.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::new("open netns", "", label.as_str(), e))?;
        Self::from_file(file, path.to_path_buf())
            .map_err(|e| Error::new("open netns", "", label, e))
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<NetNs> {
        let file = File::open(THREAD_SELF_NET)
            .map_err(|e| Error::new("open netns", "", "current netns", e))?;
        Self::from_file(file, PathBuf::from(THREAD_SELF_NET))
            .map_err(|e| Error::new("open netns", "", "current netns", e))
    }

    /// Creates a fresh, unnamed network namespace held only by the returned value: it disappears
    /// (with its links) when dropped. Its [`path`](Self::path) is `/proc/<pid>/fd/<fd>`, which other
    /// processes (e.g. a plugin under test) can open while this value lives.
    pub fn create_unnamed() -> Result<NetNs> {
        let made = std::thread::Builder::new()
            .name("twill-netns".into())
            .spawn(|| -> io::Result<File> {
                // Only this short-lived thread changes namespace.
                unshare(CloneFlags::CLONE_NEWNET)?;
                File::open(THREAD_SELF_NET)
            })
            .map_err(|e| Error::new("create netns", "", "new netns", e))?
            .join()
            .map_err(|_| {
                Error::new(
                    "create netns",
                    "",
                    "new netns",
                    io::Error::other("namespace thread panicked"),
                )
            })?;
        let file = made.map_err(|e| Error::new("create netns", "", "new netns", e))?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        ));
        Self::from_file(file, path).map_err(|e| Error::new("create netns", "", "new netns", e))
    }

    fn from_file(file: File, path: PathBuf) -> io::Result<NetNs> {
        let is_nsfs = fstatfs(&file)?.filesystem_type() == NSFS_MAGIC;
        // SAFETY: ioctl without argument on an fd we own.
        let is_net = is_nsfs
            && unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) } == libc::CLONE_NEWNET;
        if !is_net {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a network namespace",
            ));
        }
        let meta = file.metadata()?;
        Ok(NetNs {
            id: (meta.dev(), meta.ino()),
            fd: file.into(),
            path,
        })
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A label for error messages.
    pub(crate) fn label(&self) -> String {
        self.path.display().to_string()
    }

    /// Whether the calling thread is already in this namespace (then no thread is needed).
    pub fn is_current(&self) -> bool {
        match std::fs::metadata(THREAD_SELF_NET) {
            Ok(m) => (m.dev(), m.ino()) == self.id,
            Err(_) => false,
        }
    }

    /// Runs `f` inside this namespace on a short-lived thread, so the calling thread never changes
    /// namespace; returns what `f` returns. Runs `f` directly when the caller is already in it.
    /// A panic in `f` is propagated to the caller.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        if self.is_current() {
            return Ok(f());
        }
        let fd = self.fd.as_fd();
        std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("twill-netns".into())
                .spawn_scoped(scope, move || -> io::Result<T> {
                    setns(fd)?;
                    Ok(f())
                });
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => return Err(Error::new("enter netns", "", self.label(), e)),
            };
            match handle.join() {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Error::new("enter netns", "", self.label(), e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetNs {}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

pub(crate) fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // Affects only the calling (short-lived) thread.
    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}
