//! IPAM delegation (cni-spec.md §8) that overlaps with the kernel work: the delegate is started first, on its
//! own thread, and waited for only when its answer is needed, so the exec of `host-local` (about a millisecond) runs while
//! this process creates the bridge and the veth pair, and on DEL while the kernel deletes the veth.
//!
//! Why not host-local in-process: the on-disk format is the same, so it would be observably identical, but it
//! would bypass a `host-local` the operator put first in `CNI_PATH`, and the delegate's exec is already hidden
//! behind the kernel work. Delegation stays exactly the reference's contract (same env, same stdin, verb
//! overridden, stderr passed through).

use serde_json::Value;
use std::io::{ErrorKind, Write};
use std::process::{Child, Stdio};
use std::time::Duration;
use twill_cni::env::Command;
use twill_cni::{delegate, CniResult, Error, Request, Result};

/// What a delegate run produced: exit status and stdout.
type Outcome = std::io::Result<(std::process::ExitStatus, Vec<u8>)>;

/// A delegate running on its own thread (spawning a process blocks the caller until the child has exec'd,
/// about a millisecond, which would otherwise sit on the critical path). Dropping it waits, so no delegate
/// is ever left running while a later step, e.g. the rollback's DEL, talks to the same IPAM store.
pub struct Pending {
    job: Option<std::thread::JoinHandle<Outcome>>,
    plugin: String,
    command: Command,
}

fn run_child(bin: std::path::PathBuf, command: Command, stdin: Vec<u8>) -> Outcome {
    let mut attempts = 0;
    let mut child: Child = loop {
        let spawned = std::process::Command::new(&bin)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(c) => break c,
            // A binary being replaced in place ("text file busy"): libcni retries too.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(mut input) = child.stdin.take() {
        // A delegate that exits without reading gives EPIPE; its exit status then tells what went wrong.
        if let Err(e) = input.write_all(&stdin) {
            if e.kind() != ErrorKind::BrokenPipe {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    }
    let out = child.wait_with_output()?;
    Ok((out.status, out.stdout))
}

/// Start `ipam_type` for `command` with the request's stdin (and our environment, verb overridden).
pub fn spawn(ipam_type: &str, command: Command, req: &Request) -> Result<Pending> {
    let bin = delegate::find(ipam_type, &req.env)?;
    let stdin = req.stdin.clone();
    let job = std::thread::Builder::new()
        .name("ipam".into())
        .spawn(move || run_child(bin, command, stdin))
        .map_err(|e| Error::failed(format!("start IPAM thread: {e}")))?;
    Ok(Pending {
        job: Some(job),
        plugin: ipam_type.to_string(),
        command,
    })
}

impl Pending {
    /// Wait for the delegate; its stdout parsed (None when empty), or its error object with its code.
    pub fn wait(mut self) -> Result<Option<Value>> {
        let Some(job) = self.job.take() else {
            return Ok(None);
        };
        let verb = self.command.as_str();
        let (status, stdout) = job
            .join()
            .map_err(|_| Error::failed(format!("IPAM plugin {} thread panicked", self.plugin)))?
            .map_err(|e| Error::failed(format!("exec IPAM plugin {} {verb}: {e}", self.plugin)))?;
        let stdout = String::from_utf8_lossy(&stdout);
        let parsed: Option<Value> = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&stdout).map_err(|e| {
                Error::decoding(format!(
                    "IPAM plugin {} {verb}: invalid output {:?}: {e}",
                    self.plugin,
                    stdout.trim()
                ))
            })?)
        };
        if !status.success() {
            return Err(parsed
                .as_ref()
                .and_then(Error::from_json)
                .unwrap_or_else(|| {
                    Error::failed(format!(
                        "IPAM plugin {} {verb} failed ({status})",
                        self.plugin
                    ))
                }));
        }
        Ok(parsed)
    }

    /// Wait for an ADD and read its result in the request's version (§8: convert to the current model).
    pub fn wait_result(self, req: &Request) -> Result<CniResult> {
        let plugin = self.plugin.clone();
        let out = self
            .wait()?
            .ok_or_else(|| Error::failed(format!("IPAM plugin {plugin} ADD printed no result")))?;
        CniResult::from_json(&out, req.version())
            .map_err(|e| e.context(format!("result of IPAM plugin {plugin}")))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let _ = job.join();
        }
    }
}

/// A synchronous delegated verb without result (DEL, CHECK, STATUS, GC).
pub fn run(ipam_type: &str, command: Command, req: &Request) -> Result<()> {
    delegate::run(ipam_type, command, &req.stdin, &req.env)
}
