//! Test namespace fixture: a fresh network namespace (`ip netns add`) per test, removed on drop,
//! with helpers to run library code and commands inside it. Everything the tests program into
//! netfilter lives in that namespace and vanishes with it.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    /// Creates `twfw-<tag>-<pid>-<n>`; panics (never skips) when that is impossible.
    pub fn new(tag: &str) -> TestNetns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("twfw-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = TestNetns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a short-lived thread that setns'd into the namespace.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path()).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this short-lived thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs a shell command in the namespace; returns (success, stdout, stderr).
    pub fn try_sh(&self, cmd: &str) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a shell command in the namespace and returns stdout; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let (ok, out, err) = self.try_sh(cmd);
        assert!(ok, "in {}: `{cmd}` failed: {err}", self.name);
        out
    }

    pub fn nft_list(&self) -> String {
        self.sh("nft list ruleset")
    }

    pub fn nft_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.sh("nft -j list ruleset")).expect("nft -j output is JSON")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
