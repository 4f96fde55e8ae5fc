//! Network namespace fixtures: every test gets fresh, uniquely named namespaces (created with
//! `ip netns add`, so they appear under `/run/netns` like a runtime's) that are removed on drop, even
//! when the test panics. Also snapshots of a namespace's kernel state for leak assertions.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bins::require_root;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>`. Keep prefixes short and test-specific ("lo", "node", "pod").
    /// Panics (never skips) when the namespace cannot be created.
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tw-{prefix}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `ip netns add {name}` (is iproute2 installed?): {e}")
            });
        if !out.status.success() {
            panic!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = Path::new(NETNS_RUN_DIR).join(&name);
        Netns { name, path }
    }

    /// A simulated node's host namespace: like `new`, with its loopback up (as on any real host).
    pub fn node(prefix: &str) -> Netns {
        let ns = Netns::new(prefix);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (as used by `ip -n` / `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/<name>`: what runtimes pass as `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a `String`, for env vars and JSON.
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// Opens the namespace file (for `setns`).
    pub fn open(&self) -> File {
        File::open(&self.path)
            .unwrap_or_else(|e| panic!("open namespace file {}: {e}", self.path.display()))
    }

    /// Runs a command inside the namespace (`ip netns exec <name> <cmd...>`) and returns its output,
    /// whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &[S]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c.args(cmd);
        c.output()
            .unwrap_or_else(|e| panic!("run command in namespace {}: {e}", self.name))
    }

    /// Runs a command inside the namespace and returns its stdout; panics with stderr on failure.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, cmd: &[S]) -> String {
        let out = self.exec(cmd);
        let shown: Vec<String> = cmd
            .iter()
            .map(|s| s.as_ref().to_string_lossy().into_owned())
            .collect();
        check_output(&format!("in {}: {}", self.name, shown.join(" ")), out)
    }

    /// Runs `ip -n <name> <args...>` and returns its stdout; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run ip in namespace {}: {e}", self.name));
        check_output(&format!("ip -n {} {}", self.name, args.join(" ")), out)
    }

    /// Runs `f` on a short-lived thread that has `setns`'d into this namespace, so netlink sockets,
    /// sysctl writes and child processes created by `f` live there. The calling thread never changes
    /// namespace (docs/architecture.md, namespace-scoped sockets: never setns a thread other work runs on). Panics in
    /// `f` propagate.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open();
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                // SAFETY: setns on the current thread with a valid namespace fd; only this
                // short-lived thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!(
                        "setns into {}: {}",
                        self.path.display(),
                        std::io::Error::last_os_error()
                    );
                }
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The flags of a link (`UP`, `LOWER_UP`, `LOOPBACK`, ...) or `None` when it does not exist.
    pub fn link_flags(&self, link: &str) -> Option<Vec<String>> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", "dev", link])
            .output()
            .unwrap_or_else(|e| panic!("run ip in namespace {}: {e}", self.name));
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('<')?;
        let end = text[start..].find('>')? + start;
        Some(
            text[start + 1..end]
                .split(',')
                .map(str::to_string)
                .collect(),
        )
    }

    /// True when the link exists and is administratively up.
    pub fn link_is_up(&self, link: &str) -> bool {
        self.link_flags(link)
            .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
    }

    /// A snapshot of the namespace's links, addresses, routes, policy rules and nftables ruleset,
    /// to compare before/after an ADD+DEL cycle.
    pub fn state(&self) -> NetnsState {
        NetnsState {
            links: self
                .ip(&["-o", "link", "show"])
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .collect(),
            addresses: self
                .ip(&["-o", "address", "show"])
                .lines()
                .map(|l| {
                    // "<idx>: <ifname>    inet 10.0.0.1/24 ... \    valid_lft ..." -> "ifname inet addr"
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.iter()
                        .skip(1)
                        .take(3)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
            routes: [
                self.ip(&["-4", "route", "show", "table", "all"]),
                self.ip(&["-6", "route", "show", "table", "all"]),
            ]
            .iter()
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .collect(),
            rules: [
                self.ip(&["-4", "rule", "show"]),
                self.ip(&["-6", "rule", "show"]),
            ]
            .iter()
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .collect(),
            nft: self
                .exec_ok(&["nft", "list", "ruleset"])
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here must not turn a test's real panic into an abort.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Kernel state of one namespace, line by line, as `ip`/`nft` print it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetnsState {
    pub links: Vec<String>,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub rules: Vec<String>,
    pub nft: Vec<String>,
}

impl NetnsState {
    /// Lines present in `self` but not in `before`, prefixed with their category: what was leaked.
    pub fn added_since(&self, before: &NetnsState) -> Vec<String> {
        let mut out = Vec::new();
        for (what, now, then) in [
            ("link", &self.links, &before.links),
            ("address", &self.addresses, &before.addresses),
            ("route", &self.routes, &before.routes),
            ("rule", &self.rules, &before.rules),
            ("nft", &self.nft, &before.nft),
        ] {
            out.extend(
                now.iter()
                    .filter(|l| !then.contains(l))
                    .map(|l| format!("{what}: {l}")),
            );
        }
        out
    }

    /// Panics listing every link, address, route, rule or nft line added since `before`.
    pub fn assert_nothing_added_since(&self, before: &NetnsState) {
        let leaked = self.added_since(before);
        assert!(
            leaked.is_empty(),
            "leftovers in namespace:\n  {}",
            leaked.join("\n  ")
        );
    }
}

/// Names of the namespaces in `/run/netns` created by this process (for leak checks of fixtures).
pub fn own_namespaces() -> Vec<String> {
    let prefix_part = format!("-{}-", std::process::id());
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tw-") && n.contains(&prefix_part))
                .collect()
        })
        .unwrap_or_default()
}

fn check_output(what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_removed_on_drop_even_after_a_panic() {
        let path = std::panic::catch_unwind(|| {
            let ns = Netns::new("fx");
            let path = ns.path().to_path_buf();
            assert!(path.exists());
            std::panic::panic_any(path);
        })
        .expect_err("the closure panics");
        let path = path
            .downcast::<PathBuf>()
            .expect("panic payload is the path");
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn run_in_works_inside_the_namespace_without_moving_the_caller() {
        let ns = Netns::new("fx");
        let before = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
        ns.run_in(|| {
            let out = Command::new("ip")
                .args(["link", "add", "twbr0", "type", "bridge"])
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("own netns"),
            before
        );
        assert!(
            ns.link_flags("twbr0").is_some(),
            "link created inside the namespace"
        );
    }

    #[test]
    fn state_reports_what_was_added() {
        let ns = Netns::new("fx");
        let before = ns.state();
        ns.ip(&["link", "add", "twbr1", "type", "bridge"]);
        ns.ip(&["rule", "add", "fwmark", "0x42", "table", "42"]);
        let added = ns.state().added_since(&before);
        assert!(added.iter().any(|l| l == "link: twbr1"), "{added:?}");
        assert!(
            added
                .iter()
                .any(|l| l.starts_with("rule:") && l.contains("0x42")),
            "{added:?}"
        );
    }
}
