//! The reference project's own integration tests (`github.com/containernetworking/plugins/integration`
//! at the version `tests/upstream/plugins` pins), run unchanged against twill's binaries: basic ptp, ptp +
//! bandwidth, and bridge + bandwidth limiting only the restricted veth.
//!
//! What they need, and how it is given to them: the compiled test package (`go test -c` in
//! `tests/upstream/plugins`, whose go.sum covers its test dependencies); `cnitool` on `PATH` (upstream
//! libcni's, from the upstream cache); the plugin directory at `../bin` relative to their working
//! directory and their `testdata/` beside it, so the package runs from a scratch copy of that layout
//! (`<tmp>/integration` as working directory, `<tmp>/bin` holding links to our plugins); and a Go
//! module around it, because the suite builds its echo server and client with `go build` when it
//! starts. They create their own namespaces (`cni-test-*`), bridges inside them and host-local state
//! under `/tmp/{foo,bar,basic-ptp-test,chained-ptp-bandwidth-test}`; they remove the namespaces, and the test
//! process removes the directories it saw them create.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use twill_tests::bins::{
    bin, bin_dir, go_bin, link_plugin_dir, require_root, upstream_bin, workspace_dir,
};

const PACKAGE: &str = "github.com/containernetworking/plugins/integration";

/// The module's source directory in the Go module cache (for its `testdata/`).
fn package_source(go: &Path, module_dir: &Path) -> PathBuf {
    let out = Command::new(go)
        .args(["list", "-f", "{{.Dir}}", PACKAGE])
        .current_dir(module_dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .expect("run go list");
    assert!(
        out.status.success(),
        "go list {PACKAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("dir entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The host-local data directories the suite's configurations name (`testdata/`); it leaves them behind.
const SUITE_DATA_DIRS: [&str; 4] = [
    "/tmp/foo",
    "/tmp/bar",
    "/tmp/basic-ptp-test",
    "/tmp/chained-ptp-bandwidth-test",
];

/// The scratch layout with the compiled suite (16 MB); built once per test process.
struct Suite {
    root: PathBuf,
    workdir: PathBuf,
    binary: PathBuf,
    /// Those of [`SUITE_DATA_DIRS`] that did not exist before: the suite's to remove, nobody else's.
    created: Vec<PathBuf>,
}

static SUITE: OnceLock<Suite> = OnceLock::new();

/// Removes the scratch layout and the data directories the suite created, when the test process exits: a
/// static is never dropped, and the tests that share it run in parallel, so no single test may remove it.
extern "C" fn remove_suite() {
    if let Some(s) = SUITE.get() {
        let _ = std::fs::remove_dir_all(&s.root);
        for d in &s.created {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn suite() -> &'static Suite {
    SUITE.get_or_init(|| {
        let go = go_bin();
        let module_dir = workspace_dir().join("tests/upstream/plugins");
        let created = SUITE_DATA_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        // A TempDir while the suite is built, so a failed build removes it; kept (and removed at exit) after.
        let dir = tempfile::Builder::new()
            .prefix("twill-upstream-integration-")
            .tempdir()
            .expect("scratch dir");
        let root = dir.path();
        for f in ["go.mod", "go.sum"] {
            std::fs::copy(module_dir.join(f), root.join(f)).expect("copy go.mod/go.sum");
        }
        let workdir = root.join("integration");
        copy_dir(
            &package_source(&go, &module_dir).join("testdata"),
            &workdir.join("testdata"),
        );
        let plugins: Vec<&str> = ["bridge", "host-local", "bandwidth", "loopback", "ptp"]
            .into_iter()
            .filter(|p| bin_dir().join(p).is_file() || *p != "ptp")
            .collect();
        link_plugin_dir(&root.join("bin"), plugins.iter().map(|p| (*p, bin(p))));
        let binary = root.join("integration.test");
        let out = Command::new(&go)
            .args(["test", "-c", "-o"])
            .arg(&binary)
            .arg(PACKAGE)
            .current_dir(&module_dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=readonly")
            .output()
            .expect("run go test -c");
        assert!(
            out.status.success(),
            "go test -c {PACKAGE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: registers a plain function; it only reads the initialised static and removes files.
        unsafe { libc::atexit(remove_suite) };
        Suite {
            root: dir.keep(),
            workdir,
            binary,
            created,
        }
    })
}

/// Runs the specs whose full text matches `focus`; panics with the suite's output when any fails.
fn run_specs(focus: &str) {
    require_root();
    let suite = suite();
    let cnitool = upstream_bin("cni", "cnitool");
    let path = format!(
        "{}:{}",
        cnitool.parent().expect("cnitool dir").display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let out = Command::new(&suite.binary)
        .args(["-test.v", "-test.timeout", "5m", "-ginkgo.v"])
        .arg(format!("-ginkgo.focus={focus}"))
        .current_dir(&suite.workdir)
        .env("PATH", path)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .expect("run the integration suite");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "upstream integration specs {focus:?} failed:\n{text}"
    );
    assert!(
        text.contains("Passed") && !text.contains("Ran 0 of"),
        "no spec matched {focus:?}:\n{text}"
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("Ran ") || l.contains("qos limit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn reference_integration_bridge_bandwidth_limits_only_the_restricted_veth() {
    run_specs("limits traffic only on the restricted bandwidth veth device");
}

#[test]
fn reference_integration_basic_ptp_and_ptp_bandwidth() {
    let ptp = bin_dir().join("ptp");
    assert!(
        ptp.is_file(),
        "twill's ptp plugin is not built ({}): these specs need it",
        ptp.display()
    );
    run_specs("Basic PTP using cnitool basic cases");
}
