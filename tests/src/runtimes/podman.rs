//! podman with its CNI network backend, isolated from the machine's configuration: its own
//! `containers.conf` (via `CONTAINERS_CONF`), CNI config dir, storage root and run root in a temp dir, so a
//! test changes no system file and leaves nothing behind. Settings from runtimes.md: cgroupfs, runc, file
//! event log, explicit ulimits (no CAP_SYS_RESOURCE on some machines).

use super::{image, run_in};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Podman {
    dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub network: String,
    /// Namespace podman (and so every plugin it execs) runs in; `None` = the test's own.
    netns: Option<String>,
    containers: Vec<String>,
}

impl Podman {
    /// `plugin_dirs` become `cni_plugin_dirs`; `conflist` is the only network podman sees (and its default).
    pub fn new(plugin_dirs: &[&Path], conflist: &Value, netns: Option<&str>) -> Podman {
        Self::with_backend(plugin_dirs, Some(conflist), netns)
    }

    /// podman's own network stack (netavark, Debian's 1.4) on its default `podman` network: the baseline a
    /// podman user would otherwise get.
    pub fn netavark(netns: Option<&str>) -> Podman {
        Self::with_backend(&[], None, netns)
    }

    fn with_backend(
        plugin_dirs: &[&Path],
        conflist: Option<&Value>,
        netns: Option<&str>,
    ) -> Podman {
        crate::bins::require_root();
        let dir = tempfile::Builder::new()
            .prefix("twill-podman-")
            .tempdir()
            .expect("podman temp dir");
        let rootfs = image::busybox_rootfs(dir.path());
        let netd = dir.path().join("net.d");
        std::fs::create_dir_all(&netd).expect("create net.d");
        let Some(conflist) = conflist else {
            let conf = format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
                 [network]\nnetwork_backend = \"netavark\"\nnetwork_config_dir = {:?}\n",
                netd.display().to_string()
            );
            std::fs::write(dir.path().join("containers.conf"), conf)
                .expect("write containers.conf");
            return Podman {
                dir,
                rootfs,
                network: "podman".into(),
                netns: netns.map(str::to_string),
                containers: Vec::new(),
            };
        };
        let network = conflist["name"]
            .as_str()
            .expect("conflist has a name")
            .to_string();
        std::fs::write(
            netd.join(format!("{network}.conflist")),
            conflist.to_string(),
        )
        .expect("write conflist");
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n\
             default_network = {:?}\n",
            dirs.join(", "),
            netd.display().to_string(),
            network
        );
        std::fs::write(dir.path().join("containers.conf"), conf).expect("write containers.conf");
        Podman {
            dir,
            rootfs,
            network,
            netns: netns.map(str::to_string),
            containers: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(args);
        c
    }

    /// Runs `podman <args>`; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "podman {args:?} failed: {err}\n{out}");
        out
    }

    /// Starts a detached container named `name` running `cmd` from the busybox rootfs. All options must come
    /// before `--rootfs` (runtimes.md).
    pub fn start(&mut self, name: &str, extra: &[&str], cmd: &[&str]) -> String {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        let id = self.run_ok(&args);
        self.containers.push(name.to_string());
        id
    }

    /// Runs a one-shot container and returns (success, stdout+stderr).
    pub fn oneshot(&self, extra: &[&str], cmd: &[&str]) -> (bool, String) {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec!["run", "--rm", "--network", &self.network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        let (ok, out, err) = self.run(&args);
        (ok, format!("{out}\n{err}"))
    }

    /// The container's address on our network, as podman read it from the CNI result.
    pub fn ip(&self, name: &str) -> String {
        let fmt = format!(
            "{{{{.NetworkSettings.Networks.{}.IPAddress}}}}",
            self.network
        );
        self.run_ok(&["inspect", name, "--format", &fmt])
    }

    /// `podman rm -f -t 0`: CNI DEL runs as part of it.
    pub fn remove(&mut self, name: &str) {
        self.run_ok(&["rm", "-f", "-t", "0", name]);
        self.containers.retain(|c| c != name);
    }

    /// podman's CNI config directory (`network create` writes its conflists there).
    pub fn network_config_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Runs a command where podman runs (the node namespace or the test's own).
    pub fn host(&self, cmd: &[&str]) -> (bool, String, String) {
        run_in(self.netns.as_deref(), cmd)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.containers) {
            let _ = self.run(&["rm", "-f", "-t", "0", &name]);
        }
        // Storage is a temp dir, but podman mounts overlay rootfs and shm below it.
        let _ = self.run(&["system", "reset", "-f"]);
        super::unmount_below(self.dir.path());
    }
}
