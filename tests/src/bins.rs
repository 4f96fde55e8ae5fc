//! Where the binaries under test live: ours (built by cargo) and the reference plugins (Debian's
//! `containernetworking-plugins`), plus the privilege check every namespace-using test starts with.

use std::path::{Path, PathBuf};

/// Directory of the reference plugins shipped by Debian's `containernetworking-plugins`.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Root of the Cargo workspace (the parent of this crate's manifest directory).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// Directory holding our plugin binaries: `TWILL_BIN_DIR` when set (the benches point it at
/// `target/release`), else `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("TWILL_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => target_dir().join("debug"),
    }
}

/// Directory of the reference plugins.
pub fn ref_dir() -> PathBuf {
    PathBuf::from(REFERENCE_DIR)
}

/// Path of one of our binaries; panics with the fix when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "twill binary {} is missing: run `cargo build --workspace --bins` first \
             (or set TWILL_BIN_DIR to the directory holding it)",
            path.display()
        );
    }
    path
}

/// Path of a reference plugin; panics with the fix when the Debian package is missing.
pub fn ref_bin(name: &str) -> PathBuf {
    let path = ref_dir().join(name);
    if !path.is_file() {
        panic!(
            "reference plugin {} is missing: install Debian's containernetworking-plugins \
             (scripts/test.sh does)",
            path.display()
        );
    }
    path
}

/// True when running under CI (`CI=true`), where nothing that needs root may be skipped.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Every test that creates namespaces, links or firewall state calls this first. Such tests must
/// fail, never skip, when they cannot do their job, so this panics with a clear message.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test needs root (network namespaces, links, netfilter); run it as root{}",
            if in_ci() {
                " — CI=true forbids skipping it"
            } else {
                ""
            }
        );
    }
}
