//! IPAM for the main plugins (bridge, ptp; docs/cni-spec-notes.md §8), overlapped with the kernel work: it is
//! started first, on its own thread, and waited for only when its answer is needed, so it runs while the
//! plugin creates its devices (ADD) or while the kernel deletes the veth (DEL).
//!
//! `host-local` runs in-process (the twill-ipam library) when `ipam.type` is `host-local` and the first
//! `host-local` in `CNI_PATH` is our own binary (installed next to this one) or there is none. That is
//! observably identical to exec'ing it — same on-disk format and locking, same request, same errors — and
//! saves a process start (about a millisecond of CPU per verb, which is what 40 parallel ADDs on 2 cores
//! are short of). Any other `host-local` found first in `CNI_PATH` (e.g. the reference's, put there on
//! purpose) and every other IPAM type are exec'd exactly as the reference does: same environment, verb
//! overridden, same stdin, stderr passed through, the delegate's error object and code propagated.

use crate::HostLocal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use twill_cni::env::Command;
use twill_cni::{delegate, CniResult, Error, Plugin, Request, Result};

/// How this request's IPAM is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// The twill-ipam library, in this process.
    InProcess,
    /// The delegate binary at this path.
    Exec(PathBuf),
}

/// Same inode on the same device (symlinks followed): two `stat`s, where comparing canonical paths costs a
/// `readlink` per path component, on the critical path of every ADD.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Decide how `ipam_type` is served (see the module doc).
pub fn provider(ipam_type: &str, req: &Request) -> Result<Provider> {
    let found = delegate::find(ipam_type, &req.env);
    if ipam_type != "host-local" {
        return found.map(Provider::Exec);
    }
    let ours = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("host-local")));
    match found {
        Ok(path) if ours.as_deref().is_some_and(|o| same_file(o, &path)) => Ok(Provider::InProcess),
        Ok(path) => Ok(Provider::Exec(path)),
        Err(_) => Ok(Provider::InProcess),
    }
}

/// What an exec'd delegate produced.
type Outcome = std::io::Result<std::process::Output>;

enum Job {
    Exec(std::thread::JoinHandle<Outcome>),
    InProcess(std::thread::JoinHandle<Result<Option<CniResult>>>),
}

/// IPAM running on its own thread (spawning a process blocks the caller until the child has exec'd, about
/// a millisecond, which would otherwise sit on the critical path). Dropping it waits, so IPAM is never left
/// running while a later step, e.g. the rollback's DEL, talks to the same store.
pub struct Pending {
    job: Option<Job>,
    plugin: String,
    command: Command,
}

/// Start `ipam_type` for `command` (ADD or DEL) on its own thread.
pub fn spawn(ipam_type: &str, command: Command, req: &Request) -> Result<Pending> {
    let job = match provider(ipam_type, req)? {
        Provider::Exec(bin) => {
            let stdin = req.stdin.clone();
            std::thread::Builder::new()
                .name("ipam".into())
                .spawn(move || delegate::run_binary(&bin, command, &stdin))
                .map(Job::Exec)
        }
        Provider::InProcess => {
            let req = req.clone();
            std::thread::Builder::new()
                .name("ipam".into())
                .spawn(move || match command {
                    Command::Add => HostLocal.add(&req).map(Some),
                    _ => run_in_process(command, &req).map(|_| None),
                })
                .map(Job::InProcess)
        }
    }
    .map_err(|e| Error::failed(format!("start IPAM thread: {e}")))?;
    Ok(Pending {
        job: Some(job),
        plugin: ipam_type.to_string(),
        command,
    })
}

fn run_in_process(command: Command, req: &Request) -> Result<()> {
    match command {
        Command::Add => HostLocal.add(req).map(|_| ()),
        Command::Del => HostLocal.del(req),
        Command::Check => HostLocal.check(req),
        Command::Status => HostLocal.status(req),
        Command::Gc => HostLocal.gc(req),
        Command::Version => Ok(()),
    }
}

impl Pending {
    /// Wait for an exec'd delegate: its stdout parsed (None when empty), or its error object with its code.
    fn wait_exec(&self, job: std::thread::JoinHandle<Outcome>) -> Result<Option<Value>> {
        let verb = self.command.as_str();
        let out = job
            .join()
            .map_err(|_| Error::failed(format!("IPAM plugin {} thread panicked", self.plugin)))?
            .map_err(|e| Error::failed(format!("exec IPAM plugin {} {verb}: {e}", self.plugin)))?;
        delegate::interpret(&self.plugin, self.command, &out)
    }

    fn join_in_process(
        &self,
        job: std::thread::JoinHandle<Result<Option<CniResult>>>,
    ) -> Result<Option<CniResult>> {
        job.join()
            .map_err(|_| Error::failed(format!("IPAM {} thread panicked", self.plugin)))?
    }

    /// Wait for a verb without result (DEL).
    pub fn wait(mut self) -> Result<()> {
        match self.job.take() {
            None => Ok(()),
            Some(Job::Exec(j)) => self.wait_exec(j).map(|_| ()),
            Some(Job::InProcess(j)) => self.join_in_process(j).map(|_| ()),
        }
    }

    /// Wait for an ADD and read its result in the request's version (docs/cni-spec-notes.md §8: convert to the current
    /// model).
    pub fn wait_result(mut self, req: &Request) -> Result<CniResult> {
        let plugin = self.plugin.clone();
        let missing = || Error::failed(format!("IPAM plugin {plugin} ADD printed no result"));
        match self.job.take() {
            None => Err(missing()),
            Some(Job::InProcess(j)) => self.join_in_process(j)?.ok_or_else(missing),
            Some(Job::Exec(j)) => {
                let out = self.wait_exec(j)?.ok_or_else(missing)?;
                CniResult::from_json(&out, req.version())
                    .map_err(|e| e.context(format!("result of IPAM plugin {plugin}")))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        match self.job.take() {
            Some(Job::Exec(j)) => {
                let _ = j.join();
            }
            Some(Job::InProcess(j)) => {
                let _ = j.join();
            }
            None => {}
        }
    }
}

/// A synchronous IPAM verb without result (DEL on rollback, CHECK, STATUS, GC).
pub fn run(ipam_type: &str, command: Command, req: &Request) -> Result<()> {
    match provider(ipam_type, req)? {
        Provider::InProcess => run_in_process(command, req),
        Provider::Exec(_) => delegate::run(ipam_type, command, &req.stdin, &req.env),
    }
}
