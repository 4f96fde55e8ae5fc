//! The upstream programs built from the pinned Go modules under `tests/upstream/` are where the
//! other tests expect them, and are the versions the modules pin.

use std::process::Command;

use serde_json::Value;
use twill_tests::bins::{upstream_bin, upstream_hash, workspace_dir};

const MODULES: [&str; 8] = [
    "cni",
    "plugins",
    "flannel",
    "flannel-cni",
    "cri-tools",
    "kubernetes",
    "kubernetes-e2e",
    "coredns",
];

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn cache_hash_matches_the_build_script() {
    for module in MODULES {
        let script = format!(
            ". {}/scripts/lib/common.sh && upstream_hash {module}",
            workspace_dir().display()
        );
        let (ok, out) = run(Command::new("bash").arg("-c").arg(&script));
        assert!(ok, "upstream_hash {module} failed: {out}");
        assert_eq!(out.trim(), upstream_hash(module), "hash of {module}");
    }
}

/// Every module directory with a recipe is built by the build step, and the tests know each one.
#[test]
fn the_build_step_builds_every_module() {
    let script = format!(
        ". {}/scripts/lib/common.sh && printf '%s\\n' \"${{TWILL_UPSTREAM_MODULES[@]}}\"",
        workspace_dir().display()
    );
    let (ok, out) = run(Command::new("bash").arg("-c").arg(&script));
    assert!(ok, "listing the modules failed: {out}");
    let mut listed: Vec<&str> = out.lines().collect();
    listed.sort_unstable();
    let mut known = MODULES.to_vec();
    known.sort_unstable();
    assert_eq!(listed, known);
}

/// A module's cache entry depends on its own directory only: the shared build machinery can change
/// without rebuilding every module.
#[test]
fn a_module_hash_does_not_cover_the_shared_build_script() {
    let tree = tempfile::tempdir().expect("temp tree");
    let root = tree.path();
    std::fs::create_dir_all(root.join("scripts/lib")).expect("mkdir");
    std::fs::create_dir_all(root.join("tests/upstream")).expect("mkdir");
    for lib in ["common.sh", "upstream.sh"] {
        std::fs::copy(
            workspace_dir().join("scripts/lib").join(lib),
            root.join("scripts/lib").join(lib),
        )
        .expect("copy lib");
    }
    let module = root.join("tests/upstream/cni");
    std::fs::create_dir_all(module.join("libcni-driver")).expect("mkdir");
    for f in [
        "build.sh",
        "go.mod",
        "go.sum",
        "tools.go",
        "libcni-driver/main.go",
    ] {
        std::fs::copy(
            workspace_dir().join("tests/upstream/cni").join(f),
            module.join(f),
        )
        .expect("copy module file");
    }
    let hash = || {
        let script = format!(
            ". {}/scripts/lib/common.sh && upstream_hash cni",
            root.display()
        );
        let (ok, out) = run(Command::new("bash").arg("-c").arg(&script));
        assert!(ok, "upstream_hash failed: {out}");
        out.trim().to_string()
    };
    let before = hash();
    assert_eq!(before, upstream_hash("cni"), "the copy hashes as the tree");
    let shared = root.join("scripts/lib/upstream.sh");
    let mut text = std::fs::read_to_string(&shared).expect("read upstream.sh");
    text.push_str("\n# an edit of the shared machinery\n");
    std::fs::write(&shared, text).expect("write upstream.sh");
    assert_eq!(
        hash(),
        before,
        "editing upstream.sh changed the module's hash"
    );
    let recipe = module.join("build.sh");
    let mut text = std::fs::read_to_string(&recipe).expect("read build.sh");
    text.push_str("\n# an edit of the recipe\n");
    std::fs::write(&recipe, text).expect("write build.sh");
    assert_ne!(hash(), before, "editing the module's recipe kept its hash");
}

/// The control plane and kubectl are the pinned Kubernetes release, stamped as its release builds are.
#[test]
fn kubernetes_programs_are_the_pinned_release() {
    let (ok, out) = run(Command::new(upstream_bin("kubernetes", "kubectl"))
        .args(["version", "--client", "-o", "json"]));
    assert!(ok, "kubectl version failed: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["clientVersion"]["gitVersion"], "v1.37.2", "{out}");
    assert_eq!(v["clientVersion"]["minor"], "37", "{out}");
    for program in ["kube-apiserver", "kube-controller-manager"] {
        let (ok, out) = run(Command::new(upstream_bin("kubernetes", program)).arg("--version"));
        assert!(ok && out.contains("v1.37.2"), "{program} --version: {out}");
    }
}

#[test]
fn reference_plugins_of_the_pinned_release_speak_cni_1_1() {
    for plugin in [
        "bridge",
        "host-local",
        "loopback",
        "portmap",
        "tuning",
        "firewall",
    ] {
        let (ok, out) = run(Command::new(upstream_bin("plugins", plugin))
            .env_clear()
            .env("CNI_COMMAND", "VERSION"));
        assert!(ok, "{plugin} VERSION failed: {out}");
        let v: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{plugin}: {e}: {out}"));
        let versions = v["supportedVersions"]
            .as_array()
            .expect("supportedVersions");
        assert!(
            versions.iter().any(|v| v == "1.1.0"),
            "{plugin} does not support CNI 1.1.0: {out}"
        );
    }
    let (_, about) = run(Command::new(upstream_bin("plugins", "bridge")).env_clear());
    assert!(about.contains("v1.10.0"), "bridge is not v1.10.0: {about}");
}

#[test]
fn cnitool_offers_gc_and_status() {
    let (ok, out) = run(Command::new(upstream_bin("cni", "cnitool")).arg("--help"));
    assert!(ok, "cnitool --help failed: {out}");
    for verb in ["add", "check", "del", "gc", "status"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{verb} "))),
            "cnitool lacks `{verb}`: {out}"
        );
    }
}

#[test]
fn flanneld_and_critest_run() {
    let (ok, out) = run(Command::new(upstream_bin("flannel", "flanneld")).arg("--version"));
    assert!(ok && out.contains("0.28.10"), "flanneld --version: {out}");
    let (ok, out) = run(Command::new(upstream_bin("cri-tools", "critest")).arg("--version"));
    assert!(ok && out.contains("1.37.0"), "critest --version: {out}");
}

/// flannel's own CNI plugin (the reference plugins' v0.9.1 meta plugin it was forked from) reports
/// its pinned version and the spec versions it speaks (up to 0.4.0, so libcni converts for it).
#[test]
fn flannel_cni_plugin_is_the_pinned_release() {
    let plugin = upstream_bin("flannel-cni", "flannel");
    let (_, about) = run(Command::new(&plugin).env_clear());
    assert!(
        about.contains("v0.9.1"),
        "flannel plugin is not v0.9.1: {about}"
    );
    let (ok, out) = run(Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION"));
    assert!(ok, "flannel VERSION failed: {out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["cniVersion"], "0.4.0", "{out}");
}

/// The build step refuses a missing Go, and Debian's older golang-go (installed by the package list),
/// with the fix in its message, and caches nothing.
#[test]
fn the_build_step_names_the_go_it_needs() {
    let cache = tempfile::tempdir().expect("temp cache");
    for (go, want) in [
        ("/nonexistent/go", "Go toolchain /nonexistent/go not found"),
        (
            "/usr/bin/go",
            "the upstream test programs need Go >= 1.26.8",
        ),
    ] {
        let script = format!(
            "set -euo pipefail; . {}/scripts/lib/common.sh; build_upstream cni",
            workspace_dir().display()
        );
        let (ok, out) = run(Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("TWILL_GO", go)
            .env("TWILL_UPSTREAM_CACHE", cache.path()));
        assert!(!ok, "build_upstream with {go} must fail: {out}");
        assert!(out.contains(want), "{go}: expected {want:?} in: {out}");
    }
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing may be cached: {left:?}");
}
