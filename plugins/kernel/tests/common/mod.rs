//! Test namespaces made with `ip netns add`, removed on drop even when a test fails.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use twill_kernel::{Handle, NetNs};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named namespace `twk-<pid>-<n>` with an open handle.
pub struct TestNs {
    pub name: String,
    pub ns: NetNs,
    pub handle: Handle,
}

impl TestNs {
    pub fn new() -> TestNs {
        let name = format!(
            "twk-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run("ip", &["netns", "add", &name]);
        let ns = NetNs::open(format!("/run/netns/{name}")).expect("open test netns");
        let handle = Handle::in_netns(&ns).expect("handle in test netns");
        TestNs { name, ns, handle }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -j -n <ns> <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-d", "-n", &self.name];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: {e}: {out}"))
    }

    /// `bridge -j -n <ns> <args>` parsed as JSON.
    pub fn bridge_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j", "-n", &self.name];
        full.extend_from_slice(args);
        let out = run("bridge", &full);
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bridge {full:?}: {e}: {out}"))
    }

    /// An underlay for a VXLAN device: veth `under0` (peer `under0p`), up, with `addrs` (no DAD). Returns
    /// its index.
    pub fn underlay(&self, addrs: &[&str]) -> u32 {
        let under = self
            .handle
            .create_veth(&twill_kernel::VethSpec {
                name: "under0".into(),
                peer_name: "under0p".into(),
                up: true,
                ..Default::default()
            })
            .unwrap();
        for a in addrs {
            self.ip(&["addr", "add", a, "dev", "under0", "nodad"]);
        }
        under.index
    }

    /// Runs `ip -n <ns> <args>`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Inode of the calling thread's network namespace.
pub fn thread_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}
