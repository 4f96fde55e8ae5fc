//! The portmap lock: list-check-add must be one step across processes, or two ADDs asking for the same host
//! port could both see it free. An exclusive `flock` on one file serialises every portmap
//! operation on the machine; the kernel releases it when the process exits, so a crashed plugin cannot
//! leave it held. It is global rather than per network namespace, which only costs a little concurrency.

use std::path::Path;
use twill_cni::lock::FileLock;
use twill_cni::Result;

pub const DEFAULT_DIR: &str = "/run/twill";
const FILE: &str = "portmap.lock";

/// Held for a whole operation. The helpers run meanwhile (`iptables-restore`) inherit it, so a killed
/// plugin's lock is only released once its last helper has exited: the next DEL cannot list the rules while
/// a dying ADD's restore may still commit.
pub struct Lock {
    _file: FileLock,
}

impl Lock {
    /// Blocks until the lock is ours. `TWILL_PORTMAP_LOCK_DIR` overrides the directory (tests, read-only /run).
    pub fn acquire() -> Result<Lock> {
        let dir = std::env::var_os("TWILL_PORTMAP_LOCK_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(DEFAULT_DIR).to_path_buf());
        let file = FileLock::exclusive(&dir.join(FILE)).map_err(|e| e.context("portmap lock"))?;
        Ok(Lock { _file: file })
    }
}
