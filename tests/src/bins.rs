//! Where the binaries under test live: ours (built by cargo), the reference plugins (Debian's
//! `containernetworking-plugins`), the upstream programs built from the Go modules under
//! `tests/upstream/` (`scripts/lib/upstream.sh`), plus the privilege check every namespace-using test
//! starts with.

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

/// The reference plugin builds that differential tests compare with: every such test runs against
/// both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Debian's `containernetworking-plugins` 1.1.1 in `/usr/lib/cni` (what older hosts run).
    Debian,
    /// The newest upstream release, built from `tests/upstream/plugins` (v1.10.0).
    Current,
}

impl Reference {
    pub const ALL: [Reference; 2] = [Reference::Debian, Reference::Current];

    /// Directory holding this build's plugins; panics with the fix when it is missing.
    pub fn dir(self) -> PathBuf {
        match self {
            Reference::Debian => {
                ref_bin("bridge");
                ref_dir()
            }
            Reference::Current => upstream_dir("plugins"),
        }
    }

    /// Path of one of this build's plugins; panics with the fix when it is missing.
    pub fn bin(self, name: &str) -> PathBuf {
        match self {
            Reference::Debian => ref_bin(name),
            Reference::Current => upstream_bin("plugins", name),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reference::Debian => "reference 1.1.1 (Debian)",
            Reference::Current => "reference v1.10.0 (upstream)",
        })
    }
}

/// Root of the upstream build cache: `TWILL_UPSTREAM_CACHE`, else `/var/cache/twill/upstream`
/// (the same default as `scripts/lib/upstream.sh`).
pub fn upstream_cache() -> PathBuf {
    match std::env::var_os("TWILL_UPSTREAM_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/var/cache/twill/upstream"),
    }
}

/// Hash naming a module's cache entry, computed exactly as `upstream_hash` in
/// `scripts/lib/upstream.sh`: sha256 over the contents of the module's build.sh (its recipe), go.mod,
/// go.sum and *.go files in byte order of their paths; first 16 hex digits. A changed pin, recipe or
/// driver source gets a new entry for that module only.
pub fn upstream_hash(module: &str) -> String {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read upstream module dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = format!("{rel}/{name}");
            let kind = entry
                .file_type()
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            if kind.is_dir() {
                walk(&path, &rel, out);
            } else if kind.is_file()
                && (name == "build.sh"
                    || name == "go.mod"
                    || name == "go.sum"
                    || name.ends_with(".go"))
            {
                out.push((rel, path));
            }
        }
    }
    let dir = workspace_dir().join("tests/upstream").join(module);
    let mut files = Vec::new();
    walk(&dir, ".", &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for (_, path) in &files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        hasher.update(&bytes);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..16].to_string()
}

/// Directory of an upstream module's binaries (`cni`, `plugins`, `flannel`, `flannel-cni`,
/// `cri-tools`, `kubernetes`); panics with the fix when it has not been built for the module's current pins.
pub fn upstream_dir(module: &str) -> PathBuf {
    let entry = upstream_cache().join(format!("{module}-{}", upstream_hash(module)));
    if !entry.join(".complete").is_file() {
        panic!(
            "upstream module tests/upstream/{module} is not built (no {}): run \
             `scripts/build-upstream.sh {module}` (scripts/test.sh does; needs Go >= 1.26.8 at \
             /usr/local/go/bin/go or TWILL_GO, and the Go module proxy)",
            entry.display()
        );
    }
    entry.join("bin")
}

/// Path of one upstream program, e.g. `upstream_bin("plugins", "bridge")`,
/// `upstream_bin("cni", "cnitool")`, `upstream_bin("flannel", "flanneld")`,
/// `upstream_bin("flannel-cni", "flannel")`; panics with the fix when missing.
pub fn upstream_bin(module: &str, program: &str) -> PathBuf {
    let path = upstream_dir(module).join(program);
    if !path.is_file() {
        panic!(
            "upstream program {} is missing from a complete build of tests/upstream/{module}: \
             remove its cache entry and run `scripts/build-upstream.sh {module}`",
            path.display()
        );
    }
    path
}

/// The Go toolchain the tests build with: `TWILL_GO`, else the machine's `/usr/local/go/bin/go`
/// (not Debian's older golang-go, which may come first on some PATHs).
pub fn go_bin() -> PathBuf {
    match std::env::var_os("TWILL_GO") {
        Some(go) if !go.is_empty() => PathBuf::from(go),
        _ => PathBuf::from("/usr/local/go/bin/go"),
    }
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

/// Creates `dir` as a runtime's plugin directory: one symlink per `(name, binary)`.
pub fn link_plugin_dir<'a>(dir: &Path, plugins: impl IntoIterator<Item = (&'a str, PathBuf)>) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    for (name, binary) in plugins {
        std::os::unix::fs::symlink(&binary, dir.join(name))
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", name, binary.display()));
    }
}
