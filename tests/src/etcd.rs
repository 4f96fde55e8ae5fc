//! A real etcd (Debian's `etcd-server`) for tests: started on free ports with a temporary data dir, either on
//! the host's loopback or inside a test-created network namespace (the cluster's "switch"), where it also
//! listens on the switch's underlay address so daemons in node namespaces reach it. Waits until healthy;
//! can be stopped and restarted on the same ports and data (outage tests); killed and removed on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::pki::Ca;

#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Namespace etcd and etcdctl run in; `None` = the host namespace.
    netns: Option<String>,
    /// Extra listen address (the switch's underlay address) besides 127.0.0.1.
    extra: Option<Ipv4Addr>,
    /// Serve HTTPS and require client certificates.
    tls: Option<EtcdTls>,
}

/// Certificates for an etcd that serves TLS and requires client certificates (made by a test CA).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// A fresh CA, a server certificate for 127.0.0.1 and `server_ips`, and a client certificate, in `dir`.
    pub fn generate(dir: &Path, server_ips: &[Ipv4Addr]) -> EtcdTls {
        let ca = Ca::generate(dir, "twill-test-ca");
        let mut sans = vec!["IP:127.0.0.1".to_string()];
        sans.extend(server_ips.iter().map(|ip| format!("IP:{ip}")));
        let (server_cert, server_key) =
            ca.sign("server", "/CN=twill-test-server", "serverAuth", &sans);
        let (client_cert, client_key) = ca.sign(
            "client",
            "/CN=twill-test-client",
            "clientAuth",
            &["DNS:twilld".to_string()],
        );
        EtcdTls {
            ca: ca.cert,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

/// A port nobody listens on right now in the host namespace. Inside a fresh test namespace every port is free.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

impl Etcd {
    /// etcd on the host's 127.0.0.1 (for simple tests whose clients run in the host namespace).
    pub fn start() -> Etcd {
        Self::launch(None, None, free_port(), free_port(), None)
    }

    /// etcd inside `netns`, listening on its 127.0.0.1 and on `underlay` (an address of that namespace).
    pub fn start_in(netns: &Netns, underlay: Ipv4Addr) -> Etcd {
        netns.ip(&["link", "set", "lo", "up"]);
        Self::launch(
            Some(netns.name().to_string()),
            Some(underlay),
            2379,
            2380,
            None,
        )
    }

    /// etcd inside `netns` on its 127.0.0.1 only, on the given ports: a store for a program that runs
    /// in that namespace (the Kubernetes API server), beside an etcd of `start_in` on the default ports.
    pub fn start_local_in(netns: &Netns, client_port: u16, peer_port: u16) -> Etcd {
        netns.ip(&["link", "set", "lo", "up"]);
        Self::launch(
            Some(netns.name().to_string()),
            None,
            client_port,
            peer_port,
            None,
        )
    }

    /// Like `start_in`, serving HTTPS only and requiring client certificates signed by `tls.ca`.
    pub fn start_in_tls(netns: &Netns, underlay: Ipv4Addr, tls: EtcdTls) -> Etcd {
        netns.ip(&["link", "set", "lo", "up"]);
        Self::launch(
            Some(netns.name().to_string()),
            Some(underlay),
            2379,
            2380,
            Some(tls),
        )
    }

    fn launch(
        netns: Option<String>,
        extra: Option<Ipv4Addr>,
        client_port: u16,
        peer_port: u16,
        tls: Option<EtcdTls>,
    ) -> Etcd {
        crate::bins::require_root();
        // TWILL_ETCD_DIR (benchmarks: a tmpfs such as /dev/shm) takes etcd's fsync, a property of the
        // machine's disk, out of what is measured; by default the data sits in the temp dir like any test's.
        let mut builder = tempfile::Builder::new();
        builder.prefix("twill-etcd-");
        let dir = match std::env::var_os("TWILL_ETCD_DIR").filter(|d| !d.is_empty()) {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .unwrap_or_else(|e| panic!("creating etcd data dir: {e}"));
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port,
            peer_port,
            netns,
            extra,
            tls,
        };
        etcd.spawn();
        etcd
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) {
        let scheme = self.scheme();
        let mut clients = format!("{scheme}://127.0.0.1:{}", self.client_port);
        if let Some(ip) = self.extra {
            clients.push_str(&format!(",{scheme}://{ip}:{}", self.client_port));
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap_or_else(|e| panic!("opening etcd log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning etcd log handle: {e}"));
        let mut cmd = self.command("etcd");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server_cert);
            cmd.arg("--key-file").arg(&tls.server_key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "twill-test"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--listen-client-urls",
                &clients,
                "--advertise-client-urls",
                &clients,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("twill-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd (is Debian's etcd-server installed?): {e}"));
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20));
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "etcd exited during start-up ({status}); log:\n{}",
                        self.log()
                    );
                }
            }
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            if start.elapsed() > timeout {
                panic!("etcd not healthy after {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The endpoint on 127.0.0.1 (of the host or of the etcd namespace).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// The endpoint on the underlay address, for clients in other namespaces.
    pub fn underlay_endpoint(&self) -> String {
        let ip = self
            .extra
            .expect("etcd was started without an underlay address");
        format!("{}://{ip}:{}", self.scheme(), self.client_port)
    }

    /// Stops etcd (SIGKILL: an abrupt outage) keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Loses all data: SIGKILL, data dir removed, started again empty on the same ports (a new store).
    pub fn wipe_and_restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.spawn();
    }

    /// `etcdctl snapshot save` to `file` (etcd keeps running).
    pub fn snapshot_save(&self, file: &Path) {
        let f = file.to_string_lossy().into_owned();
        self.ctl_ok(&["snapshot", "save", &f]);
    }

    /// Restores an older snapshot as an operator would: SIGKILL, data dir replaced by `etcdctl snapshot
    /// restore` of `file` (same member name and peer URL), started again on the same ports.
    pub fn restore_snapshot(&mut self, file: &Path) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data_dir());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(file)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--name", "twill-test"])
            .args(["--initial-cluster", &format!("twill-test={peer}")])
            .args(["--initial-advertise-peer-urls", &peer])
            .output()
            .unwrap_or_else(|e| panic!("running etcdctl snapshot restore: {e}"));
        assert!(
            out.status.success(),
            "etcdctl snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `etcdctl --endpoints <127.0.0.1> <args>` where etcd runs.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("etcdctl");
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoint(),
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running etcdctl (is Debian's etcd-client installed?): {e}"))
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        if !out.status.success() {
            panic!(
                "etcdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl_ok(&["put", key, value]);
    }

    /// Puts `key` attached to a new etcd lease of `ttl_secs`.
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl_secs: u64) {
        let grant = self.ctl_ok(&["lease", "grant", &ttl_secs.to_string()]);
        // "lease 694d7a0f9c4fb80a granted with TTL(10s)"
        let id = grant
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected lease grant output {grant:?}"));
        self.ctl_ok(&["put", "--lease", id, key, value]);
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl_ok(&["get", key, "--print-value-only"]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }

    /// All `(key, value)` pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl_ok(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    pub fn del(&self, key: &str) {
        self.ctl_ok(&["del", key]);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
