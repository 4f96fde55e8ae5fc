//! The portmap lock: list-check-add must be one step across processes, or two ADDs asking for the same host
//! port could both see it free (issue 7). An exclusive `flock` on one file serialises every portmap
//! operation on the machine; the kernel releases it when the process exits, so a crashed plugin cannot
//! leave it held. It is global rather than per network namespace, which only costs a little concurrency.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use twill_cni::{Error, Result};

pub const DEFAULT_DIR: &str = "/run/twill";
const FILE: &str = "portmap.lock";

pub struct Lock {
    _file: File,
}

impl Lock {
    /// Blocks until the lock is ours. `TWILL_PORTMAP_LOCK_DIR` overrides the directory (tests, read-only /run).
    pub fn acquire() -> Result<Lock> {
        let dir = std::env::var_os("TWILL_PORTMAP_LOCK_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(DEFAULT_DIR).to_path_buf());
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::failed(format!("portmap lock: create {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::failed(format!("portmap lock: open {}: {e}", path.display())))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::failed(format!(
                    "portmap lock: flock {}: {e}",
                    path.display()
                )));
            }
        }
    }
}
