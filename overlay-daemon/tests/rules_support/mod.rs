//! What the traffic-rule tests (traffic_rules.rs, traffic_rules_legacy.rs) share: a private network namespace
//! per test, shell commands run in it, and rules made and applied through the daemon's API.
#![allow(dead_code)] // each test file uses part of it

use std::process::Command;

use ipnet::IpNet;
use twilld::rules::{RuleOptions, RulesBackend, TrafficRules};

/// Runs `f` on a thread with a private network namespace (commands it runs inherit it), which vanishes with
/// the thread; a panic in `f` is the caller's.
pub fn in_fresh_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `sh -c cmd`, which must succeed: its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn options(masquerade: bool, forward: bool, fully_random: bool) -> RuleOptions {
    RuleOptions {
        masquerade,
        forward,
        fully_random,
    }
}

/// The rules of `backend` for `network` and this node's `subnet`, applied.
pub fn applied(
    backend: RulesBackend,
    network: &str,
    subnet: &str,
    opts: RuleOptions,
) -> TrafficRules {
    let mut r = TrafficRules::new(backend, net(network), net(subnet), opts)
        .unwrap_or_else(|e| panic!("rules for {network} {subnet}: {e}"));
    r.apply()
        .unwrap_or_else(|e| panic!("applying rules for {network} {subnet}: {e}"));
    r
}
