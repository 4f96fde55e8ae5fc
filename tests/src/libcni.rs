//! Runtimes' view of CNI through the real libcni, three ways ([`Driver`]):
//! - Debian's libcni 1.1.2 (`golang-github-appc-cni-dev`, spec ≤ 1.0.0: the "older runtime", with
//!   down-conversion of results to 0.4.0/0.3.1): the cnitool-compatible Go program in
//!   `tests/cnitool/main.go`, built once per test process (and guarded by a file lock across parallel
//!   test binaries) into `<target>/cnitool/`;
//! - upstream libcni (the release `tests/upstream/cni` pins, spec 1.1: GC with
//!   `cni.dev/valid-attachments`, STATUS, `cniVersions`, `disableGC`) through our small driver
//!   `tests/upstream/cni/libcni-driver`, which adds to cnitool what tests need (cache dir, container
//!   id, the attachments a GC keeps);
//! - the real upstream `cnitool` itself (results cached in libcni's default `/var/lib/cni`, container
//!   id derived from the netns path; its `gc` keeps no attachment).
//!
//! Tests drive network lists through them exactly as runtimes do: config loading, version
//! reconciliation, chaining, result cache, prevResult on CHECK/DEL (docs/cni-spec-notes.md §9).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::bins::{go_bin, target_dir, upstream_bin, workspace_dir};
use crate::exec::{run_command, Outcome, DEFAULT_TIMEOUT};

/// Debian's Go source tree holding libcni, for GOPATH mode.
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// A network or container name no other test in this or a parallel run uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of the built driver; builds it on first use (once per process, serialised across processes).
/// `TWILL_CNITOOL` may point at a prebuilt binary instead.
pub fn cnitool() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| match std::env::var_os("TWILL_CNITOOL") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                build_cnitool().unwrap_or_else(|e| panic!("building the libcni driver failed: {e}"))
            }
        })
        .clone()
}

/// Builds `tests/cnitool/main.go` with `GO111MODULE=off GOPATH=/usr/share/gocode:<tmp>` unless an
/// up-to-date binary exists. The output is written to a temporary name and renamed, so a concurrent
/// test process never executes a half-written file.
pub fn build_cnitool() -> Result<PathBuf, String> {
    let src = workspace_dir().join("tests/cnitool/main.go");
    let dir = target_dir().join("cnitool");
    let out = dir.join("cnitool");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let lock_path = dir.join(".lock");
    let lock =
        File::create(&lock_path).map_err(|e| format!("create {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a valid fd we own; released when `lock` is closed at the end of this function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "lock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let src_time =
        mtime(&src).ok_or_else(|| format!("driver source {} is missing", src.display()))?;
    if mtime(&out).is_some_and(|t| t >= src_time) {
        return Ok(out);
    }
    if !Path::new(DEBIAN_GOPATH)
        .join("src/github.com/containernetworking/cni/libcni")
        .is_dir()
    {
        return Err(format!(
            "libcni sources not found under {DEBIAN_GOPATH}: install golang-github-appc-cni-dev"
        ));
    }
    let tmp = dir.join(format!("cnitool.tmp.{}", std::process::id()));
    let result = Command::new(go_bin())
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{DEBIAN_GOPATH}:{}", dir.join("gopath").display()),
        )
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|e| {
            format!(
                "run `{} build` (set TWILL_GO to a Go toolchain): {e}",
                go_bin().display()
            )
        })?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "`go build {}` failed: {}",
            src.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename {} into place: {e}", tmp.display()))?;
    Ok(out)
}

/// Which libcni build runs the network lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Debian's libcni 1.1.2 through `tests/cnitool` (spec ≤ 1.0.0; no GC, no STATUS).
    Debian,
    /// Upstream libcni through `tests/upstream/cni/libcni-driver`.
    Upstream,
    /// The real upstream `cnitool`: no cache dir, container id or GC attachments of our choosing.
    Cnitool,
}

/// Where the real `cnitool` caches results (libcni's default; it offers no way to change it).
pub const CNITOOL_CACHE_DIR: &str = "/var/lib/cni";

/// A runtime's view of libcni: where network lists live, where plugins are found, where results are
/// cached, and the per-attachment parameters cnitool takes from its environment.
#[derive(Debug, Clone)]
pub struct LibCni {
    /// `NETCONFPATH`: directory scanned for `*.conflist`.
    pub netconf_dir: PathBuf,
    /// `CNI_PATH`: plugin search path, first hit wins.
    pub cni_path: Vec<PathBuf>,
    /// Result cache root (`<cache>/results/<net>-<id>-<ifname>`); one per test or simulated node.
    pub cache_dir: PathBuf,
    /// `CNI_IFNAME` (cnitool's default: eth0).
    pub ifname: Option<String>,
    /// Container id; default as cnitool, derived from the netns path.
    pub container_id: Option<String>,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub cni_args: Option<String>,
    /// `CAP_ARGS`, the capability arguments (e.g. `{"portMappings": [...]}`).
    pub cap_args: Option<Value>,
    /// Namespace the driver (and so every plugin it runs) executes in: the simulated node.
    pub host_netns: Option<PathBuf>,
    pub timeout: Duration,
    pub driver: Driver,
    /// For GC: the attachments to keep, `(container id, ifname)`; `None` passes libcni no GC arguments.
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// Keeps a scratch directory alive as long as any clone of this driver.
    scratch: Option<Arc<tempfile::TempDir>>,
}

impl LibCni {
    pub fn new(
        netconf_dir: impl Into<PathBuf>,
        cni_path: Vec<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> LibCni {
        LibCni {
            netconf_dir: netconf_dir.into(),
            cni_path,
            cache_dir: cache_dir.into(),
            ifname: None,
            container_id: None,
            cni_args: None,
            cap_args: None,
            host_netns: None,
            timeout: DEFAULT_TIMEOUT,
            driver: Driver::Debian,
            valid_attachments: None,
            scratch: None,
        }
    }

    /// The same directories and parameters, run by another libcni build. With [`Driver::Cnitool`]
    /// results are cached in [`CNITOOL_CACHE_DIR`] whatever `cache_dir` says.
    pub fn with_driver(&self, driver: Driver) -> LibCni {
        LibCni {
            driver,
            ..self.clone()
        }
    }

    /// The attachments a GC keeps (sent as `cni.dev/valid-attachments` and `cni.dev/attachments`).
    pub fn with_valid_attachments(&self, keep: &[(&str, &str)]) -> LibCni {
        LibCni {
            valid_attachments: Some(
                keep.iter()
                    .map(|(id, ifname)| (id.to_string(), ifname.to_string()))
                    .collect(),
            ),
            ..self.clone()
        }
    }

    /// A driver with its own fresh config and cache directories (removed when the last clone drops).
    pub fn scratch(cni_path: Vec<PathBuf>) -> LibCni {
        let dir = tempfile::Builder::new()
            .prefix("twill-libcni-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create scratch dir for libcni: {e}"));
        let netconf_dir = dir.path().join("net.d");
        let cache_dir = dir.path().join("cache");
        for d in [&netconf_dir, &cache_dir] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let mut lib = LibCni::new(netconf_dir, cni_path, cache_dir);
        lib.scratch = Some(Arc::new(dir));
        lib
    }

    /// Writes `conflist` as `<netconf_dir>/<name>.conflist` and returns the network name.
    pub fn write_conflist(&self, conflist: &Value) -> String {
        let name = conflist
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("conflist without a name: {conflist}"))
            .to_string();
        let path = self.netconf_dir.join(format!("{name}.conflist"));
        let text = serde_json::to_string_pretty(conflist)
            .unwrap_or_else(|e| panic!("serialise conflist: {e}"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        name
    }

    pub fn with_ifname(&self, ifname: &str) -> LibCni {
        LibCni {
            ifname: Some(ifname.to_string()),
            ..self.clone()
        }
    }

    pub fn with_container_id(&self, id: &str) -> LibCni {
        LibCni {
            container_id: Some(id.to_string()),
            ..self.clone()
        }
    }

    pub fn with_cni_args(&self, args: &str) -> LibCni {
        LibCni {
            cni_args: Some(args.to_string()),
            ..self.clone()
        }
    }

    pub fn with_cap_args(&self, cap_args: Value) -> LibCni {
        LibCni {
            cap_args: Some(cap_args),
            ..self.clone()
        }
    }

    /// Runs the driver, and so every plugin, inside `netns` (the simulated node).
    pub fn in_netns(&self, netns: &Path) -> LibCni {
        LibCni {
            host_netns: Some(netns.to_path_buf()),
            ..self.clone()
        }
    }

    /// `AddNetworkList`; on success stdout is the final result in the list's version.
    pub fn add(&self, net: &str, netns: &Path) -> Outcome {
        self.run(&["add", net, &netns.display().to_string()])
    }

    /// `CheckNetworkList` with the cached result as prevResult.
    pub fn check(&self, net: &str, netns: &Path) -> Outcome {
        self.run(&["check", net, &netns.display().to_string()])
    }

    /// `DelNetworkList` (reverse order, cached result as prevResult, cache removed on success).
    pub fn del(&self, net: &str, netns: &Path) -> Outcome {
        self.run(&["del", net, &netns.display().to_string()])
    }

    /// `GCNetworkList`: DEL of every cached attachment of the list not kept, then GC of each plugin
    /// (spec ≥ 1.1.0 lists). Upstream libcni only.
    pub fn gc(&self, net: &str) -> Outcome {
        match self.driver {
            Driver::Debian => panic!("Debian's libcni 1.1.2 has no GC: use Driver::Upstream"),
            // cnitool wants a netns argument it does not use for gc.
            Driver::Cnitool => self.run(&["gc", net, "/run/netns/unused"]),
            Driver::Upstream => self.run(&["gc", net]),
        }
    }

    /// `GetStatusNetworkList` (a no-op below spec 1.1.0). Upstream libcni only.
    pub fn status(&self, net: &str) -> Outcome {
        match self.driver {
            Driver::Debian => panic!("Debian's libcni 1.1.2 has no STATUS: use Driver::Upstream"),
            Driver::Cnitool => self.run(&["status", net, "/run/netns/unused"]),
            Driver::Upstream => self.run(&["status", net]),
        }
    }

    /// `GetVersionInfo` for each plugin of the list: `[{"type", "supportedVersions"}]`; with the
    /// upstream driver `{"cniVersion": <the list's version after cniVersions>, "plugins": [...]}`.
    pub fn version(&self, net: &str) -> Outcome {
        self.run(&["version", net])
    }

    /// `ValidateNetworkList`: `{"capabilities": [...]}`.
    pub fn validate(&self, net: &str) -> Outcome {
        self.run(&["validate", net])
    }

    /// The cached result file libcni wrote for an attachment, if any.
    pub fn cached_result_path(&self, net: &str, container_id: &str, ifname: &str) -> PathBuf {
        let cache = match self.driver {
            Driver::Cnitool => Path::new(CNITOOL_CACHE_DIR),
            _ => self.cache_dir.as_path(),
        };
        cache
            .join("results")
            .join(format!("{net}-{container_id}-{ifname}"))
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let tool = match self.driver {
            Driver::Debian => cnitool(),
            Driver::Upstream => upstream_bin("cni", "libcni-driver"),
            Driver::Cnitool => {
                assert!(
                    self.container_id.is_none(),
                    "the real cnitool derives the container id from the netns path"
                );
                upstream_bin("cni", "cnitool")
            }
        };
        let mut cmd = Command::new(&tool);
        cmd.args(args).env_clear();
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        );
        cmd.env("NETCONFPATH", &self.netconf_dir);
        cmd.env("CNI_CACHE_DIR", &self.cache_dir);
        let path = std::env::join_paths(&self.cni_path)
            .unwrap_or_else(|e| panic!("CNI_PATH entries must not contain ':': {e}"));
        cmd.env("CNI_PATH", path);
        if let Some(ifname) = &self.ifname {
            cmd.env("CNI_IFNAME", ifname);
        }
        if let Some(id) = &self.container_id {
            cmd.env("CNI_CONTAINERID", id);
        }
        if let Some(args) = &self.cni_args {
            cmd.env("CNI_ARGS", args);
        }
        if let Some(cap) = &self.cap_args {
            cmd.env("CAP_ARGS", cap.to_string());
        }
        if let Some(keep) = &self.valid_attachments {
            let keep: Vec<Value> = keep
                .iter()
                .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
                .collect();
            cmd.env("CNI_VALID_ATTACHMENTS", Value::Array(keep).to_string());
        }
        let host = self.host_netns.as_ref().map(|p| {
            File::open(p).unwrap_or_else(|e| panic!("open host namespace {}: {e}", p.display()))
        });
        run_command(cmd, host.as_ref(), &[], self.timeout)
            .unwrap_or_else(|e| panic!("cannot execute {}: {e}", tool.display()))
    }
}
