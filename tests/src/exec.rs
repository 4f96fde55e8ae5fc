//! Running a CNI plugin the way a runtime does (docs/cni-spec-notes.md §2): `CNI_*` environment variables, the
//! request config on stdin, the result or error object read from stdout, stderr kept for diagnostics.
//! The plugin can be run inside a test-created "host" namespace so bridges, routes and netfilter
//! state it touches are isolated per test and vanish with the namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a single plugin run may take before the harness kills it (a hung plugin fails the
/// test instead of hanging CI).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The spec versions every plugin must advertise (docs/cni-spec-notes.md §1).
pub const ALL_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// How variables the invocation has no value for are passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetVars {
    /// Left out of the environment entirely (a hand-written runtime, the spec's minimum).
    Absent,
    /// Present with an empty value, as libcni does: it always sets all six variables (docs/cni-spec-notes.md §2).
    Empty,
}

/// One plugin execution: binary, `CNI_*` variables, stdin, extra environment, optional host namespace.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub plugin: PathBuf,
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub unset_vars: UnsetVars,
    /// Namespace file the plugin process is moved into before exec (its "host" namespace).
    pub host_netns: Option<PathBuf>,
    pub timeout: Duration,
    /// Command-line arguments: none for CNI plugins; for wrapped helpers in tests.
    pub argv: Vec<String>,
}

impl Invocation {
    /// A request for `command` with runtime-like defaults: container id `twill-test`, ifname `eth0`,
    /// `CNI_PATH` = the plugin's own directory, empty stdin, absent variables left out.
    pub fn new(plugin: impl Into<PathBuf>, command: &str) -> Invocation {
        let plugin = plugin.into();
        let path = plugin.parent().map(|p| p.display().to_string());
        Invocation {
            plugin,
            command: Some(command.to_string()),
            container_id: Some("twill-test".to_string()),
            netns: None,
            ifname: Some("eth0".to_string()),
            args: None,
            path,
            stdin: Vec::new(),
            env: Vec::new(),
            unset_vars: UnsetVars::Absent,
            host_netns: None,
            timeout: DEFAULT_TIMEOUT,
            argv: Vec::new(),
        }
    }

    /// A bare invocation: no `CNI_*` variable at all, empty stdin.
    pub fn bare(plugin: impl Into<PathBuf>) -> Invocation {
        let mut inv = Invocation::new(plugin, "");
        inv.command = None;
        inv.container_id = None;
        inv.ifname = None;
        inv.path = None;
        inv
    }

    pub fn command(mut self, command: Option<&str>) -> Self {
        self.command = command.map(str::to_string);
        self
    }

    pub fn container_id(mut self, id: Option<&str>) -> Self {
        self.container_id = id.map(str::to_string);
        self
    }

    pub fn netns(mut self, netns: Option<&Path>) -> Self {
        self.netns = netns.map(|p| p.display().to_string());
        self
    }

    /// Sets `CNI_NETNS` to an arbitrary string (not necessarily a path).
    pub fn netns_str(mut self, netns: Option<&str>) -> Self {
        self.netns = netns.map(str::to_string);
        self
    }

    pub fn ifname(mut self, ifname: Option<&str>) -> Self {
        self.ifname = ifname.map(str::to_string);
        self
    }

    pub fn cni_args(mut self, args: Option<&str>) -> Self {
        self.args = args.map(str::to_string);
        self
    }

    pub fn cni_path(mut self, path: Option<&str>) -> Self {
        self.path = path.map(str::to_string);
        self
    }

    /// The request config as JSON on stdin.
    pub fn stdin_json(mut self, config: &Value) -> Self {
        self.stdin = config.to_string().into_bytes();
        self
    }

    /// Raw bytes on stdin (for malformed-input tests).
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// An extra environment variable (e.g. `CNI_NETNS_OVERRIDE`, `TRACEPARENT`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// libcni's convention: all six variables present, empty when unused.
    pub fn libcni_style(mut self) -> Self {
        self.unset_vars = UnsetVars::Empty;
        self
    }

    /// Runs the plugin inside the namespace at `netns` (its "host" namespace).
    pub fn in_netns(mut self, netns: &Path) -> Self {
        self.host_netns = Some(netns.to_path_buf());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Command-line arguments (CNI plugins take none; useful for helpers run like plugins).
    pub fn argv(mut self, args: &[&str]) -> Self {
        self.argv = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Executes the plugin and collects its outcome. Panics only when the harness itself cannot
    /// run it (missing binary, unopenable namespace), never because of what the plugin did.
    pub fn run(&self) -> Outcome {
        let host = self.host_file();
        run_command(self.process(), host.as_ref(), &self.stdin, self.timeout)
            .unwrap_or_else(|e| panic!("cannot execute {}: {e}", self.plugin.display()))
    }

    /// As [`run`](Self::run), with as little of the harness as possible in [`Outcome::elapsed`], for
    /// benchmarks: the plugin is spawned without forking this (large) process, from the calling thread moved
    /// into the host namespace for the moment of the spawn, and its three pipes are served by one poll loop
    /// on the calling thread rather than by four threads. Through [`run`](Self::run), exec'ing `/bin/true`
    /// took 1.1-1.5 ms here against 0.9 ms by `posix_spawn` alone: that overhead was in both sides of every
    /// ratio.
    pub fn run_lean(&self) -> Outcome {
        let host = self.host_file();
        run_command_lean(self.process(), host.as_ref(), &self.stdin, self.timeout)
            .unwrap_or_else(|e| panic!("cannot execute {}: {e}", self.plugin.display()))
    }

    fn host_file(&self) -> Option<File> {
        self.host_netns.as_ref().map(|p| {
            File::open(p).unwrap_or_else(|e| panic!("open host namespace {}: {e}", p.display()))
        })
    }

    /// The process to run: binary, arguments and environment.
    fn process(&self) -> Command {
        let mut cmd = Command::new(&self.plugin);
        cmd.args(&self.argv).env_clear();
        // Plugins may exec helpers (iptables, nft) found through PATH, like under a real runtime.
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        );
        for (key, value) in [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ] {
            match (value, self.unset_vars) {
                (Some(v), _) => {
                    cmd.env(key, v);
                }
                (None, UnsetVars::Empty) => {
                    cmd.env(key, "");
                }
                (None, UnsetVars::Absent) => {}
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }
}

/// Runs `cmd` with `stdin`, optionally inside the namespace `host`, killing it after `timeout`.
/// Shared by plugin invocations and the libcni driver.
pub(crate) fn run_command(
    mut cmd: Command,
    host: Option<&File>,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    if let Some(host) = host {
        let fd = host.as_raw_fd();
        // SAFETY: only async-signal-safe work (one setns syscall) between fork and exec; the fd stays
        // open in the parent for the duration of spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let mut child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take();
    let mut child_stderr = child.stderr.take();
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (stdout, stderr, status) = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut s) = child_stdin.take() {
                // A plugin that exits without reading stdin gives EPIPE: not the harness's concern.
                let _ = s.write_all(stdin);
            }
        });
        let out = scope.spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = child_stdout.take() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let err = scope.spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = child_stderr.take() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        scope.spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        let status = child.wait();
        // Releases the watchdog before the scope joins it.
        let _ = done_tx.send(());
        (out, err, status)
    });
    let status = status?;
    let elapsed = started.elapsed();
    let timed_out = elapsed >= timeout && status.signal() == Some(libc::SIGKILL);
    Ok(Outcome::of(status, &stdout, &stderr, elapsed, timed_out))
}

/// The calling thread in another network namespace until dropped; then back where it was.
struct ThreadInNetns {
    back: File,
}

impl ThreadInNetns {
    fn enter(target: &File) -> std::io::Result<ThreadInNetns> {
        let back = File::open("/proc/thread-self/ns/net")?;
        // SAFETY: setns(2) on fds we hold; it moves only the calling thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ThreadInNetns { back })
    }
}

impl Drop for ThreadInNetns {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        if unsafe { libc::setns(self.back.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // Every later namespace-relative step of this thread would act on the wrong namespace.
            eprintln!(
                "cannot return the thread to its network namespace: {}",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
}

/// [`run_command`] for benchmarks (see [`Invocation::run_lean`]): no `pre_exec` (which makes std fork
/// instead of `posix_spawn`), no threads.
fn run_command_lean(
    mut cmd: Command,
    host: Option<&File>,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    use std::os::fd::{AsFd, BorrowedFd};
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = {
        let _inside = host.map(ThreadInNetns::enter).transpose()?;
        cmd.spawn()?
    };
    // As files, so one loop serves both readers.
    let file = |fd: std::os::fd::OwnedFd| File::from(fd);
    let mut child_stdin = child
        .stdin
        .take()
        .filter(|_| !stdin.is_empty())
        .map(|p| file(p.into()));
    let mut child_stdout = child.stdout.take().map(|p| file(p.into()));
    let mut child_stderr = child.stderr.take().map(|p| file(p.into()));
    for fd in [
        child_stdin.as_ref().map(|f| f.as_raw_fd()),
        child_stdout.as_ref().map(|f| f.as_raw_fd()),
        child_stderr.as_ref().map(|f| f.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: fcntl(2) on a pipe end we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let (mut out, mut err, mut written) = (Vec::new(), Vec::new(), 0usize);
    let mut killed = false;
    while child_stdin.is_some() || child_stdout.is_some() || child_stderr.is_some() {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            killed = true;
            break;
        }
        let fd_of = |f: Option<BorrowedFd<'_>>| f.map_or(-1, |f| f.as_raw_fd());
        let mut fds = [
            libc::pollfd {
                fd: fd_of(child_stdin.as_ref().map(|f| f.as_fd())),
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: fd_of(child_stdout.as_ref().map(|f| f.as_fd())),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd_of(child_stderr.as_ref().map(|f| f.as_fd())),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: poll(2) on our array; negative fds are ignored by the kernel.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            if let Some(pipe) = child_stdin.as_mut() {
                match pipe.write(&stdin[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // A plugin that exits without reading stdin gives EPIPE: not the harness's concern.
                    Err(_) => written = stdin.len(),
                }
            }
            if written >= stdin.len() {
                child_stdin = None;
            }
        }
        for (revents, pipe, buf) in [
            (fds[1].revents, &mut child_stdout, &mut out),
            (fds[2].revents, &mut child_stderr, &mut err),
        ] {
            if revents == 0 {
                continue;
            }
            if let Some(p) = pipe.as_mut() {
                let mut chunk = [0u8; 16384];
                match p.read(&mut chunk) {
                    Ok(0) => *pipe = None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => *pipe = None,
                }
            }
        }
    }
    drop((child_stdin, child_stdout, child_stderr));
    let status = child.wait()?;
    Ok(Outcome::of(status, &out, &err, started.elapsed(), killed))
}

/// What a plugin run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Outcome {
    fn of(
        status: std::process::ExitStatus,
        stdout: &[u8],
        stderr: &[u8],
        elapsed: Duration,
        timed_out: bool,
    ) -> Outcome {
        let stdout = String::from_utf8_lossy(stdout).into_owned();
        Outcome {
            code: status.code(),
            signal: status.signal(),
            json: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            elapsed,
            timed_out,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} signal {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.signal,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the run exited 0; returns the parsed stdout (`Value::Null` when empty).
    pub fn assert_success(&self) -> Value {
        self.assert_no_panic();
        assert!(self.success(), "plugin failed: {}", self.describe());
        self.json.clone().unwrap_or(Value::Null)
    }

    /// Panics unless the run failed cleanly with a CNI error object on stdout carrying `code` and a
    /// non-empty `msg` (docs/cni-spec-notes.md §6). Returns the error object.
    pub fn assert_error(&self, code: u64) -> Value {
        self.assert_no_panic();
        assert!(
            self.code.is_some_and(|c| c != 0),
            "expected a non-zero exit with error code {code}: {}",
            self.describe()
        );
        let err = self.json.clone().unwrap_or_else(|| {
            panic!(
                "expected a CNI error object on stdout (code {code}): {}",
                self.describe()
            )
        });
        assert_eq!(
            err.get("code").and_then(Value::as_u64),
            Some(code),
            "wrong CNI error code: {}",
            self.describe()
        );
        assert!(
            err.get("msg")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "CNI error without a msg: {}",
            self.describe()
        );
        err
    }

    /// Panics unless the run failed cleanly with some CNI error object (any code).
    pub fn assert_any_error(&self) -> Value {
        self.assert_no_panic();
        assert!(
            self.code.is_some_and(|c| c != 0),
            "expected a failure: {}",
            self.describe()
        );
        let err = self.json.clone().unwrap_or_else(|| {
            panic!("expected a CNI error object on stdout: {}", self.describe())
        });
        assert!(
            err.get("code").and_then(Value::as_u64).is_some(),
            "error object without a numeric code: {}",
            self.describe()
        );
        assert!(
            err.get("msg")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "CNI error without a msg: {}",
            self.describe()
        );
        err
    }

    /// Panics when the process panicked, aborted, was killed or timed out: no input may do that.
    pub fn assert_no_panic(&self) {
        assert!(!self.timed_out, "plugin timed out: {}", self.describe());
        assert!(
            !self.stderr.contains("panicked"),
            "plugin panicked: {}",
            self.describe()
        );
        assert!(
            self.signal.is_none() && !matches!(self.code, Some(101) | Some(134)),
            "plugin crashed: {}",
            self.describe()
        );
    }
}

/// Runs `CNI_COMMAND=VERSION` the way libcni probes (docs/cni-spec-notes.md §2: dummy netns/ifname/path, its current
/// version on stdin) and returns the outcome.
pub fn version(plugin: impl Into<PathBuf>) -> Outcome {
    Invocation::new(plugin, "VERSION")
        .libcni_style()
        .container_id(None)
        .netns_str(Some("dummy"))
        .ifname(Some("dummy"))
        .cni_path(Some("dummy"))
        .stdin_bytes(r#"{"cniVersion":"1.0.0"}"#)
        .run()
}

/// The `supportedVersions` a plugin advertises; panics when VERSION fails.
pub fn supported_versions(plugin: impl Into<PathBuf>) -> Vec<String> {
    let answer = version(plugin).assert_success();
    answer
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| panic!("VERSION answer without supportedVersions: {answer}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::Netns;

    #[test]
    fn hung_plugin_is_killed_at_the_timeout() {
        let outcome = Invocation::bare("/bin/sleep")
            .timeout(Duration::from_millis(200))
            .env("IGNORED", "1")
            .argv(&["30"])
            .run();
        assert!(outcome.timed_out, "{}", outcome.describe());
        assert!(outcome.elapsed < Duration::from_secs(5));
    }

    #[test]
    fn env_and_stdin_reach_the_plugin_like_a_runtime_sends_them() {
        let outcome = Invocation::new("/bin/sh", "ADD")
            .libcni_style()
            .stdin_bytes("{\"a\":1}")
            .argv(&[
                "-c",
                "printf '{\"cmd\":\"%s\",\"netns\":\"%s\",\"netns_set\":\"%s\",\"stdin\":%s}' \
                 \"$CNI_COMMAND\" \"$CNI_NETNS\" \"${CNI_NETNS+yes}\" \"$(cat)\"",
            ])
            .run();
        let json = outcome.assert_success();
        assert_eq!(json["cmd"], "ADD");
        assert_eq!(json["netns"], "");
        assert_eq!(
            json["netns_set"], "yes",
            "libcni style sets unused variables to empty"
        );
        assert_eq!(json["stdin"]["a"], 1);
    }

    #[test]
    fn plugin_runs_in_the_given_host_namespace() {
        let node = Netns::new("fx");
        Invocation::bare("/bin/ip")
            .in_netns(node.path())
            .argv(&["link", "add", "twbr2", "type", "bridge"])
            .run()
            .assert_success();
        assert!(node.link_flags("twbr2").is_some());
    }
}
