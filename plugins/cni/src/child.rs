//! Helper processes a plugin runs (the IPAM delegate, `iptables`, `iptables-restore`, `nft`) must not outlive
//! it. A runtime that kills a plugin (timeout, SIGKILL of its process group is not guaranteed) and then runs
//! DEL expects the killed ADD to have stopped: a helper still running could commit rules or a lease after
//! that DEL returned, and nothing would ever remove them. So every helper gets `PR_SET_PDEATHSIG(SIGKILL)`,
//! and it also inherits the locks the plugin holds ([`crate::lock`]): the kernel releases a `flock` only when
//! the last descriptor of it closes, so the next writer waits until the helper is gone too.

use std::os::unix::process::CommandExt;

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid};
use std::process::Command;

/// Make `cmd`'s child die with this process: `SIGKILL` when the spawning thread exits (Linux ties the
/// death signal to the thread, so spawn from a thread that waits for the child, as every caller does).
/// A parent that died before the signal was armed is noticed by comparing the parent pid, closing the race
/// between `fork` and `prctl`.
pub fn bind_to_parent(cmd: &mut Command) -> &mut Command {
    let parent = getpid();
    crate::lock::export_held(cmd);
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid) between fork and exec: it
    // neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_child_runs_normally() {
        let out = bind_to_parent(Command::new("sh").args(["-c", "echo ok"]))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"ok\n");
    }
}
