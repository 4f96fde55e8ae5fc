//! Delegation (docs/cni-spec-notes.md §8): find a plugin binary in `CNI_PATH`, run it with our environment (verb
//! overridden) and our whole stdin, pass its stderr through, and read its result or error.

use crate::env::{Command, Env};
use crate::error::{Error, Result};
use crate::result::CniResult;
use crate::version::Version;
use serde_json::Value;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// First regular file named `plugin_type` in the `CNI_PATH` directories.
pub fn find(plugin_type: &str, env: &Env) -> Result<PathBuf> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(Error::invalid_config(format!(
            "invalid plugin type {plugin_type:?}"
        )));
    }
    if env.path.is_empty() {
        return Err(Error::invalid_env(format!(
            "required env variables [CNI_PATH] missing (needed to find {plugin_type:?})"
        )));
    }
    env.path
        .iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.metadata().map(|m| m.is_file()).unwrap_or(false))
        .ok_or_else(|| {
            let dirs: Vec<String> = env.path.iter().map(|d| d.display().to_string()).collect();
            Error::failed(format!(
                "failed to find plugin {plugin_type:?} in path [{}]",
                dirs.join(" ")
            ))
        })
}

/// Run `plugin_type` for `command` with `stdin`. Returns the parsed stdout (None when empty).
pub fn exec(plugin_type: &str, command: Command, stdin: &[u8], env: &Env) -> Result<Option<Value>> {
    let bin = find(plugin_type, env)?;
    let out = run_binary(&bin, command, stdin).map_err(|e| {
        Error::failed(format!(
            "exec delegate {} {}: {e}",
            bin.display(),
            command.as_str()
        ))
    })?;
    interpret(plugin_type, command, &out)
}

/// The blocking part of a delegation: start `bin` with our environment and `CNI_COMMAND` overridden, feed it
/// `stdin`, pass its stderr through, and wait. Separate from [`interpret`] so a caller can run it on another
/// thread while it does other work.
pub fn run_binary(bin: &Path, command: Command, stdin: &[u8]) -> std::io::Result<Output> {
    let mut attempts = 0;
    let mut child = loop {
        let mut cmd = std::process::Command::new(bin);
        let spawned = crate::child::bind_to_parent(&mut cmd)
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
        // The delegate may exit without reading stdin (e.g. on an early error); its exit status tells.
        if let Err(e) = input.write_all(stdin) {
            if e.kind() != ErrorKind::BrokenPipe {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
    }
    child.wait_with_output()
}

/// A finished delegate's stdout parsed (None when empty), or its error object with its own code.
pub fn interpret(plugin_type: &str, command: Command, out: &Output) -> Result<Option<Value>> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = if stdout.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&stdout).map_err(|e| {
            Error::decoding(format!(
                "delegate {plugin_type} {}: invalid output {:?}: {e}",
                command.as_str(),
                stdout.trim()
            ))
        })?)
    };
    if !out.status.success() {
        return Err(parsed
            .as_ref()
            .and_then(Error::from_json)
            .unwrap_or_else(|| {
                Error::failed(format!(
                    "delegate {plugin_type} {} failed ({})",
                    command.as_str(),
                    out.status
                ))
            }));
    }
    Ok(parsed)
}

/// Delegated ADD returning the (up-converted) result.
pub fn add(plugin_type: &str, stdin: &[u8], env: &Env, version: Version) -> Result<CniResult> {
    let out = exec(plugin_type, Command::Add, stdin, env)?
        .ok_or_else(|| Error::failed(format!("delegate {plugin_type} ADD printed no result")))?;
    CniResult::from_json(&out, version)
        .map_err(|e| e.context(format!("result of delegate {plugin_type}")))
}

/// Delegated verb without a result (DEL, CHECK, STATUS, GC).
pub fn run(plugin_type: &str, command: Command, stdin: &[u8], env: &Env) -> Result<()> {
    exec(plugin_type, command, stdin, env).map(|_| ())
}
