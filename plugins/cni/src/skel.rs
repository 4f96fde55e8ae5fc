//! Verb dispatch, the part every plugin binary shares (docs/cni-spec-notes.md §4): read the environment and
//! stdin, validate them in the order the reference skel does (so errors and codes match), call the plugin,
//! print its result in the request's version or the error object, and choose the exit code.

use crate::config::NetConf;
use crate::env::{Command, Env};
use crate::error::{code, Error, Result};
use crate::names::{ContainerId, IfName};
use crate::result::CniResult;
use crate::version::{Version, SUPPORTED};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

/// One invocation, validated: verb, environment and configuration.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub env: Env,
    pub config: NetConf,
    pub stdin: Vec<u8>,
}

impl Request {
    pub fn container_id(&self) -> Result<&ContainerId> {
        self.env
            .container_id
            .as_ref()
            .ok_or_else(|| Error::invalid_env("required env variables [CNI_CONTAINERID] missing"))
    }

    pub fn ifname(&self) -> Result<&IfName> {
        self.env
            .ifname
            .as_ref()
            .ok_or_else(|| Error::invalid_env("required env variables [CNI_IFNAME] missing"))
    }

    pub fn netns(&self) -> Result<&Path> {
        self.env
            .netns
            .as_deref()
            .ok_or_else(|| Error::invalid_env("required env variables [CNI_NETNS] missing"))
    }

    pub fn version(&self) -> Version {
        self.config.version
    }
}

pub trait Plugin {
    /// Whether `command` uses `CNI_NETNS` as a namespace (enters it, creates or inspects links in it). For
    /// those verbs the skel checks, before the plugin runs, that the path is a network namespace, so a wrong
    /// path is a clear code-4 error rather than a netlink one. For every other verb the value is opaque, as
    /// to the reference plugins that never open it: an IPAM plugin, a meta plugin that only passes it on to
    /// its delegate, a DEL that handles a namespace that is already gone, and GC/STATUS, which have none.
    fn enters_netns(&self, command: Command) -> bool;
    /// The oldest config version the plugin takes: VERSION lists the supported versions from it on, and a
    /// config older than it is refused for every verb ("incompatible CNI versions", code 1) before the plugin
    /// runs, as the reference skel does with its plugin's version list. Chained plugins that need
    /// `prevResult` start at 0.3.0.
    fn oldest_version(&self) -> Version {
        Version::V0_1_0
    }
    fn add(&self, req: &Request) -> Result<CniResult>;
    fn del(&self, req: &Request) -> Result<()>;
    fn check(&self, req: &Request) -> Result<()>;
    /// STATUS (1.1): ready to service ADD. Plugins with a delegate must forward it.
    fn status(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
    /// GC (1.1): release what belongs to attachments outside `cni.dev/valid-attachments`.
    fn gc(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
}

/// The versions a plugin whose oldest accepted version is `oldest` speaks, oldest first.
fn supported_from(oldest: Version) -> Vec<&'static str> {
    SUPPORTED
        .iter()
        .filter(|v| **v >= oldest)
        .map(|v| v.as_str())
        .collect()
}

/// `{"cniVersion","supportedVersions"}`: skel answers with its own latest version and so do we.
pub fn version_info(oldest: Version) -> Value {
    json!({ "cniVersion": Version::LATEST.as_str(), "supportedVersions": supported_from(oldest) })
}

/// `v<version>, commit <id>` of this build, for the "about" line. The VERSION answer keeps to the two keys the
/// spec defines (`cniVersion`, `supportedVersions`), so the build identity lives here. `TWILL_COMMIT` is set by
/// `scripts/release.sh`; a build outside it (cargo in a work tree, a tarball without git) says `unknown`.
pub fn build_version() -> String {
    format!(
        "v{}, commit {}",
        env!("CARGO_PKG_VERSION"),
        option_env!("TWILL_COMMIT").unwrap_or("unknown")
    )
}

/// Run the plugin for this process's environment and stdin; returns the process exit code.
pub fn run<P: Plugin>(plugin: &P, about: &str) -> ExitCode {
    install_panic_hook();
    let verb = std::env::var("CNI_COMMAND").unwrap_or_default();
    if verb.is_empty() {
        eprintln!(
            "{about} {}\nCNI protocol versions supported: {}",
            build_version(),
            supported_from(plugin.oldest_version()).join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let mut version = Version::LATEST;
    match dispatch(plugin, &verb, &mut version) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(out)) => {
            print_json(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_json(&e.to_json(version.as_str()));
            ExitCode::from(1)
        }
    }
}

fn dispatch<P: Plugin>(plugin: &P, verb: &str, version: &mut Version) -> Result<Option<Value>> {
    let command = Command::parse(verb)?;
    if command == Command::Version {
        return Ok(Some(version_info(plugin.oldest_version())));
    }
    let env = Env::from_process(command)?;
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        Error::new(
            code::IO_FAILURE,
            format!("error reading from stdin: {e}"),
            "",
        )
    })?;
    let config = NetConf::parse(&stdin)?;
    *version = config.version;
    check_verb_allowed(command, config.version)?;
    let oldest = plugin.oldest_version();
    if config.version < oldest {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {:?}, plugin supports {:?}",
                config.version.as_str(),
                supported_from(oldest)
            ),
        ));
    }
    if plugin.enters_netns(command) {
        if let Some(ns) = &env.netns {
            check_netns(ns)?;
        }
    }
    let req = Request {
        command,
        env,
        config,
        stdin,
    };
    match command {
        Command::Add => Ok(Some(plugin.add(&req)?.to_json(req.version()))),
        Command::Del => plugin.del(&req).map(|_| None),
        Command::Check => plugin.check(&req).map(|_| None),
        Command::Status => plugin.status(&req).map(|_| None),
        Command::Gc => plugin.gc(&req).map(|_| None),
        Command::Version => Ok(Some(version_info(plugin.oldest_version()))),
    }
}

/// CHECK exists from 0.4.0, STATUS and GC from 1.1.0; libcni and skel refuse them for older configs (code 1).
fn check_verb_allowed(command: Command, v: Version) -> Result<()> {
    let allowed = match command {
        Command::Check => v.supports_check(),
        Command::Status | Command::Gc => v.supports_status_and_gc(),
        _ => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {v} does not allow {}", command.as_str()),
            "",
        ))
    }
}

/// `CNI_NETNS` must name a network namespace, for the verbs that enter it ([`Plugin::enters_netns`]).
/// `NS_GET_NSTYPE` (Linux 4.11+) tells the namespace type
/// exactly; on older kernels an opened namespace file (also `/proc/<pid>/ns/net`) is at least on nsfs.
pub fn check_netns(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)
    let not_netns = || {
        Error::invalid_env(format!(
            "CNI_NETNS {} is not a network namespace",
            path.display()
        ))
    };
    let file = std::fs::File::open(path)
        .map_err(|e| Error::invalid_env(format!("CNI_NETNS {}: {e}", path.display())))?;
    // SAFETY: ioctl on a file descriptor we own; NS_GET_NSTYPE takes no argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind >= 0 {
        return if kind == libc::CLONE_NEWNET {
            Ok(())
        } else {
            Err(not_netns())
        };
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTTY) {
        return Err(not_netns());
    }
    let st = nix::sys::statfs::fstatfs(&file).map_err(|_| not_netns())?;
    if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(not_netns());
    }
    Ok(())
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    // A runtime that closed our stdout cannot be told anything more; ignore write errors.
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// A bug must still produce a CNI error object rather than a bare Rust panic message the runtime cannot parse.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("internal error (please report): {info}");
        eprintln!("{msg}");
        print_json(&Error::failed(msg).to_json(Version::LATEST.as_str()));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespaces_pass_the_netns_check() {
        assert!(check_netns(Path::new("/proc/self/ns/net")).is_ok());
        for bad in [
            "/proc/self/ns/mnt",
            "/proc/self/status",
            "/etc/passwd",
            "/nonexistent/ns",
        ] {
            assert_eq!(check_netns(Path::new(bad)).unwrap_err().code, 4, "{bad}");
        }
    }
}
