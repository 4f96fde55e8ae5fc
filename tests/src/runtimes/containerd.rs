//! containerd 1.6 with its built-in CRI plugin, started as a child process with all its state in a temp
//! dir (no systemd), CNI `bin_dir`/`conf_dir` pointed at the plugins under test, and a locally built pause
//! image imported so CRI never pulls (runtimes.md).

use super::cri::CriClient;
use super::{image, run_in};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    netns: Option<String>,
    mount_ns: Option<PathBuf>,
}

/// Where a containerd runs and which CNI set-up its CRI plugin uses.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// CNI `bin_dir`.
    pub bin_dir: PathBuf,
    /// CNI `conf_dir`; `None`: a directory of its own holding the `conflist` given to `start_with`.
    pub conf_dir: Option<PathBuf>,
    /// The named network namespace to run in (the test's own when `None`).
    pub netns: Option<String>,
    /// A mount namespace to run in (a bind-mounted namespace file, as `unshare --mount=FILE` makes).
    pub mount_ns: Option<PathBuf>,
    /// containerd's log level (`debug` makes the CRI plugin log when each pod's CNI setup begins and
    /// ends); containerd's default (`info`) when `None`.
    pub log_level: Option<String>,
}

impl Containerd {
    /// Starts containerd (inside `netns` when given) whose CRI execs plugins from `bin_dir` with `conflist`.
    pub fn start(bin_dir: &Path, conflist: &Value, netns: Option<&str>) -> Containerd {
        let placement = Placement {
            bin_dir: bin_dir.to_path_buf(),
            netns: netns.map(str::to_string),
            ..Placement::default()
        };
        Self::start_with(&placement, Some(conflist))
    }

    /// Starts containerd as `placement` says; `conflist` is written into its own CNI `conf_dir` when
    /// `placement.conf_dir` is `None` (a node whose network is installed later, as a kubelet's is, passes
    /// a `conf_dir` and no conflist).
    pub fn start_with(placement: &Placement, conflist: Option<&Value>) -> Containerd {
        crate::bins::require_root();
        let dir = tempfile::Builder::new()
            .prefix("twill-containerd-")
            .tempdir()
            .expect("containerd temp dir");
        let d = dir.path();
        let netd = match &placement.conf_dir {
            Some(conf_dir) => conf_dir.clone(),
            None => {
                let netd = d.join("net.d");
                std::fs::create_dir_all(&netd).expect("create net.d");
                netd
            }
        };
        if let Some(conflist) = conflist {
            std::fs::write(netd.join("10-twill.conflist"), conflist.to_string())
                .expect("write conflist");
        }
        let socket = d.join("containerd.sock");
        // restrict_oom_score_adj: without CAP_SYS_RESOURCE RunPodSandbox fails otherwise (runtimes.md).
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {:?}\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = {:?}\n    conf_dir = {:?}\n",
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            socket.display().to_string(),
            image::PAUSE_IMAGE,
            placement.bin_dir.display().to_string(),
            netd.display().to_string(),
        );
        let config = match &placement.log_level {
            Some(level) => format!("{config}[debug]\n  level = {level:?}\n"),
            None => config,
        };
        std::fs::write(d.join("config.toml"), config).expect("write containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let mut cmd = if placement.netns.is_none() && placement.mount_ns.is_none() {
            Command::new("containerd")
        } else {
            let mut c = Command::new("nsenter");
            if let Some(ns) = &placement.netns {
                c.arg(format!("--net=/run/netns/{ns}"));
            }
            if let Some(mnt) = &placement.mount_ns {
                c.arg(format!("--mount={}", mnt.display()));
            }
            c.arg("containerd");
            c
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start containerd (install the containerd package): {e}"));
        let mut c = Containerd {
            dir,
            socket,
            child: Some(child),
            netns: placement.netns.clone(),
            mount_ns: placement.mount_ns.clone(),
        };
        c.wait_ready();
        c.import_pause_image();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited early ({status}):\n{}", self.log());
            }
            if self.socket.exists() && CriClient::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not become ready in 30 s:\n{}", self.log());
    }

    fn import_pause_image(&self) {
        self.import_tar(&image::pause_image_tar(self.dir.path()));
    }

    /// Imports a busybox image named `name` (a full reference, e.g. `twill.test/web:1`) running
    /// `entrypoint`, so CRI finds it without a registry.
    pub fn import_image(&self, key: &str, name: &str, entrypoint: &[&str]) {
        self.import_tar(&image::image_tar(self.dir.path(), key, name, entrypoint));
    }

    /// Imports an image archive (OCI layout or docker archive), as `ctr -n k8s.io images import` does.
    pub fn import_tar(&self, tar: &Path) {
        let sock = self.socket.display().to_string();
        let tar = tar.display().to_string();
        let (ok, out, err) = run_in(
            None,
            &[
                "ctr",
                "--address",
                &sock,
                "-n",
                "k8s.io",
                "images",
                "import",
                &tar,
            ],
        );
        assert!(ok, "import image {tar}: {err}\n{out}");
    }

    pub fn cri(&self) -> CriClient {
        CriClient::connect(&self.socket).unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Its directory (config, log, root and state); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The network namespace CRI created for sandbox `id`, read from the sandbox container's OCI spec.
    pub fn sandbox_netns(&self, id: &str) -> String {
        let sock = self.socket.display().to_string();
        let (ok, out, err) = self.host(&[
            "ctr",
            "--address",
            &sock,
            "-n",
            "k8s.io",
            "containers",
            "info",
            id,
        ]);
        assert!(ok, "ctr containers info {id}: {err}");
        let info: Value = serde_json::from_str(&out).expect("ctr info is JSON");
        info["Spec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no network namespace in the spec of sandbox {id}: {out}"))
    }

    /// Runs a command where containerd runs (the node namespace or the test's own).
    pub fn host(&self, cmd: &[&str]) -> (bool, String, String) {
        run_in(self.netns.as_deref(), cmd)
    }

    /// Kills the runc shims this instance started: they outlive containerd by design.
    fn kill_shims(&self) {
        let sock = self.socket.display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&sock) {
                // SAFETY: plain kill(2) on a pid we just read; a race with its exit is harmless.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that failed half way leaves sandboxes: tear them down through CRI so their network
        // namespaces and CNI state go too, as a kubelet would.
        if let Ok(mut cri) = CriClient::connect(&self.socket) {
            for id in cri.list_pod_sandboxes().unwrap_or_default() {
                let _ = cri.stop_pod_sandbox(&id);
                let _ = cri.remove_pod_sandbox(&id);
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_shims();
        // Container root filesystems and shm are mounted where containerd runs.
        if let Some(mnt) = &self.mount_ns {
            super::unmount_below_in(mnt, self.dir.path());
        }
        super::unmount_below(self.dir.path());
    }
}
