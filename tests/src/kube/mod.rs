//! A real Kubernetes control plane for tests: etcd (Debian's), `kube-apiserver` and
//! `kube-controller-manager` of the pinned release (`tests/upstream/kubernetes`), with certificates made
//! for the test, RBAC on, running inside a cluster's switch namespace and serving at
//! `https://10.250.0.254:6443`, so processes in every node namespace reach it as they reach a real one.
//! The controller-manager allocates node podCIDRs (`--allocate-node-cidrs`, single or dual stack).
//! Every process is killed and every file removed on drop, even when the test panics.
//!
//! Helpers register node namespaces as Node objects and wait for their podCIDRs, mint ServiceAccount
//! tokens and client certificates, write kubeconfigs for them and run kubectl with them. The node programs
//! (scheduler, kubelet, kube-proxy) are meant to join the same way: a binary of the same module,
//! `client_cert` for their identity, `kubeconfig` for their credentials, `spawn` for the process.

pub mod api;
pub mod cluster;
pub mod conformance;
pub mod kubeconfig;
pub mod mount_ns;
pub mod node;
pub mod pki;
pub mod twill_image;
pub mod workload;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{wait_until, DaemonProcess, Node, Switch, SWITCH_IP};
use crate::etcd::Etcd;
use crate::netns::Netns;
pub use kubeconfig::Credentials;
pub use pki::Pki;

/// The API server's port on `SWITCH_IP`.
pub const API_PORT: u16 = 6443;
/// The control plane's etcd listens on the switch's 127.0.0.1 on these, beside an etcd for twilld
/// (`Switch::start_etcd`, on the default ports) when a test wants both.
const ETCD_CLIENT_PORT: u16 = 12379;
const ETCD_PEER_PORT: u16 = 12380;

/// Kubernetes programs of the pinned release (`scripts/build-upstream.sh kubernetes`).
pub fn kube_bin(program: &str) -> PathBuf {
    crate::bins::upstream_bin("kubernetes", program)
}

/// Cluster-wide address plan and the controllers to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--cluster-cidr`: one range per family (the controller-manager carves node podCIDRs from them).
    pub cluster_cidrs: Vec<String>,
    /// `--service-cluster-ip-range`: one range per family, in the same order.
    pub service_cidrs: Vec<String>,
    /// Size of each node's IPv4 and IPv6 podCIDR.
    pub node_mask_v4: u8,
    pub node_mask_v6: u8,
    /// `--allocate-node-cidrs`: off, nodes keep an empty podCIDR until a test sets one (what a cluster
    /// set up without `--cluster-cidr` looks like to a network daemon).
    pub allocate_node_cidrs: bool,
    /// `--controllers` of the controller-manager (`*` runs them all; the default is what node networking
    /// needs, which keeps start-up and CPU small).
    pub controllers: Vec<String>,
}

impl Options {
    /// IPv4 only, flannel's default network: 10.244.0.0/16 with a /24 per node.
    pub fn ipv4() -> Options {
        Options {
            cluster_cidrs: vec!["10.244.0.0/16".into()],
            service_cidrs: vec!["10.96.0.0/16".into()],
            node_mask_v4: 24,
            node_mask_v6: 64,
            allocate_node_cidrs: true,
            controllers: [
                "node-ipam-controller",
                "serviceaccount-controller",
                "root-ca-certificate-publisher-controller",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// Dual stack: IPv4 as `ipv4`, plus fd00:10:244::/56 with a /64 per node and an IPv6 service range.
    pub fn dual_stack() -> Options {
        let mut o = Options::ipv4();
        o.cluster_cidrs.push("fd00:10:244::/56".into());
        o.service_cidrs.push("fd00:10:96::/112".into());
        o
    }

    fn is_dual_stack(&self) -> bool {
        self.cluster_cidrs.len() > 1
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::ipv4()
    }
}

/// A Node object to register.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// `status.addresses` of type InternalIP (one per family at most).
    pub internal_ips: Vec<IpAddr>,
    pub labels: Vec<(String, String)>,
}

impl NodeSpec {
    /// The node namespace `node` as Kubernetes sees it: its name and its underlay address.
    pub fn of(node: &Node) -> NodeSpec {
        NodeSpec {
            name: node.name(),
            internal_ips: vec![IpAddr::V4(node.underlay_ip)],
            labels: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> NodeSpec {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    fn manifest(&self) -> Value {
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut addresses: Vec<Value> = self
            .internal_ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": self.name}));
        // A node's status is kept on create (a kubelet registers the same way).
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "status": {"addresses": addresses},
        })
    }
}

/// The running control plane. Fields drop in order: controller-manager, API server, etcd, files.
pub struct ControlPlane {
    controller_manager: Option<DaemonProcess>,
    apiserver: Option<DaemonProcess>,
    etcd: Etcd,
    pki: Pki,
    opts: Options,
    netns: String,
    admin: PathBuf,
    startup: Duration,
    dir: tempfile::TempDir,
}

pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl ControlPlane {
    /// Starts etcd, the API server and the controller-manager inside `switch`'s namespace; returns once the
    /// API server is ready (`/readyz`) and the controller-manager runs. Drop it before the switch.
    pub fn start(switch: &Switch, opts: Options) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("twill-kube-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the control plane's directory: {e}"));
        let pki = Pki::generate(&dir.path().join("pki"), &Self::server_ips(&opts));
        let etcd = Etcd::start_local_in(&switch.ns, ETCD_CLIENT_PORT, ETCD_PEER_PORT);
        let (cert, key) = pki.client_cert("admin", "twill-admin", &["system:masters"]);
        let admin = kubeconfig::write(
            &dir.path().join("admin.kubeconfig"),
            &Self::url(),
            &pki.ca_cert,
            &Credentials::Cert { cert, key },
        );
        let mut cp = ControlPlane {
            controller_manager: None,
            apiserver: None,
            etcd,
            pki,
            opts,
            netns: switch.ns.name().to_string(),
            admin,
            startup: Duration::ZERO,
            dir,
        };
        cp.start_apiserver();
        cp.start_controller_manager();
        cp
    }

    /// The URL every client uses, from the switch or from any node namespace.
    pub fn url() -> String {
        format!("https://{SWITCH_IP}:{API_PORT}")
    }

    /// Addresses in the API server's certificate: the switch's, and the first address of each service
    /// range (the `kubernetes` Service's ClusterIP, which pods use).
    fn server_ips(opts: &Options) -> Vec<IpAddr> {
        let mut ips = vec![IpAddr::V4(SWITCH_IP)];
        for cidr in &opts.service_cidrs {
            let base: IpAddr = cidr
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("bad service CIDR {cidr}"));
            ips.push(match base {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
            });
        }
        ips
    }

    /// Starts `program` of the pinned release inside the switch namespace, logging to `<program>.log`.
    pub fn spawn(&self, program: &str, args: &[String]) -> DaemonProcess {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(kube_bin(program))
            .args(args);
        DaemonProcess::spawn(cmd, self.log_path(program))
    }

    fn log_path(&self, program: &str) -> PathBuf {
        self.dir.path().join(format!("{program}.log"))
    }

    fn file_arg(flag: &str, path: &Path) -> String {
        format!("--{flag}={}", path.display())
    }

    /// Starts the API server (again, after `stop_apiserver`) on the same etcd and waits for `/readyz`.
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "the API server already runs");
        // The API server's identity towards kubelets (logs, exec, port-forward), as kubeadm makes it.
        let (kubelet_cert, kubelet_key) = self.pki.client_cert(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        );
        let p = &self.pki;
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={API_PORT}"),
            format!("--advertise-address={SWITCH_IP}"),
            Self::file_arg("tls-cert-file", &p.apiserver_cert),
            Self::file_arg("tls-private-key-file", &p.apiserver_key),
            Self::file_arg("client-ca-file", &p.ca_cert),
            Self::file_arg("cert-dir", &self.dir.path().join("apiserver")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            Self::file_arg("service-account-key-file", &p.sa_pub),
            Self::file_arg("service-account-signing-key-file", &p.sa_key),
            format!(
                "--service-cluster-ip-range={}",
                self.opts.service_cidrs.join(",")
            ),
            "--authorization-mode=Node,RBAC".into(),
            Self::file_arg("kubelet-client-certificate", &kubelet_cert),
            Self::file_arg("kubelet-client-key", &kubelet_key),
            // Node names are not in any DNS: kubelets are reached at their InternalIP.
            "--kubelet-preferred-address-types=InternalIP".into(),
            // What a cluster without kubelets, storage, webhooks and quotas does not use: each of these
            // starts informers and slows the first /readyz.
            "--enable-admission-plugins=NodeRestriction".into(),
            "--disable-admission-plugins=LimitRanger,DefaultStorageClass,PersistentVolumeClaimResize,\
             StorageObjectInUseProtection,PodGroupProtection,RuntimeClass,CertificateApproval,\
             CertificateSigning,ClusterTrustBundleAttest,CertificateSubjectRestriction,DefaultIngressClass,\
             MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,\
             ValidatingAdmissionWebhook,ResourceQuota"
                .into(),
            "--enable-priority-and-fairness=false".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        let start = Instant::now();
        let mut daemon = self.spawn("kube-apiserver", &args);
        let mut running = true;
        let ready = wait_until(Duration::from_secs(90), || {
            running = daemon.is_running();
            !running || self.kubectl(&["get", "--raw=/readyz"]).status.success()
        });
        if !ready || !running {
            panic!(
                "kube-apiserver not ready (running: {running}) after {:?}; its log:\n{}\netcd's log:\n{}",
                start.elapsed(),
                tail(&self.log_path("kube-apiserver"), 60),
                self.etcd.log()
            );
        }
        self.apiserver = Some(daemon);
        self.startup = start.elapsed();
    }

    /// Stops the API server (SIGTERM, as a restart by an operator would); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut d) = self.apiserver.take() {
            d.terminate();
        }
    }

    /// Time from starting the API server to its first successful `/readyz` (the last start).
    pub fn apiserver_startup(&self) -> Duration {
        self.startup
    }

    fn start_controller_manager(&mut self) {
        let (cert, key) =
            self.pki
                .client_cert("controller-manager", "system:kube-controller-manager", &[]);
        let kubeconfig = self.kubeconfig(
            "controller-manager.kubeconfig",
            &Credentials::Cert { cert, key },
        );
        let o = &self.opts;
        let mut args = vec![
            Self::file_arg("kubeconfig", &kubeconfig),
            "--leader-elect=false".into(),
            // Each controller acts with its own ServiceAccount and RBAC role, as kubeadm sets it up.
            "--use-service-account-credentials=true".into(),
            format!("--controllers={}", o.controllers.join(",")),
            format!("--allocate-node-cidrs={}", o.allocate_node_cidrs),
            format!("--cluster-cidr={}", o.cluster_cidrs.join(",")),
            format!("--service-cluster-ip-range={}", o.service_cidrs.join(",")),
            Self::file_arg("service-account-private-key-file", &self.pki.sa_key),
            Self::file_arg("root-ca-file", &self.pki.ca_cert),
            "--bind-address=127.0.0.1".into(),
            Self::file_arg("cert-dir", &self.dir.path().join("controller-manager")),
            "--profiling=false".into(),
        ];
        if o.is_dual_stack() {
            args.push(format!("--node-cidr-mask-size-ipv4={}", o.node_mask_v4));
            args.push(format!("--node-cidr-mask-size-ipv6={}", o.node_mask_v6));
        } else if o.cluster_cidrs[0].contains(':') {
            args.push(format!("--node-cidr-mask-size={}", o.node_mask_v6));
        } else {
            args.push(format!("--node-cidr-mask-size={}", o.node_mask_v4));
        }
        let mut cm = self.spawn("kube-controller-manager", &args);
        std::thread::sleep(Duration::from_millis(200));
        if !cm.is_running() {
            panic!(
                "kube-controller-manager exited at start; its log:\n{}",
                tail(&self.log_path("kube-controller-manager"), 60)
            );
        }
        self.controller_manager = Some(cm);
    }

    /// The CA clients trust.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The cluster-admin kubeconfig (user twill-admin in system:masters).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// The control plane's directory (certificates, kubeconfigs, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig named `name` into the control plane's directory.
    pub fn kubeconfig(&self, name: &str, credentials: &Credentials) -> PathBuf {
        self.kubeconfig_at(&self.dir.path().join(name), credentials)
    }

    /// Writes a kubeconfig to `path` (e.g. into a node's directory).
    pub fn kubeconfig_at(&self, path: &Path, credentials: &Credentials) -> PathBuf {
        kubeconfig::write(path, &Self::url(), &self.pki.ca_cert, credentials)
    }

    /// A client certificate for `user` in `groups`; see `Pki::client_cert`.
    pub fn client_cert(&self, file: &str, user: &str, groups: &[&str]) -> Credentials {
        let (cert, key) = self.pki.client_cert(file, user, groups);
        Credentials::Cert { cert, key }
    }

    /// Runs kubectl as `kubeconfig` inside namespace `netns` (the switch when `None`), feeding `stdin`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        netns: Option<&Netns>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Output {
        use std::io::Write;
        let ns = netns.map(|n| n.name()).unwrap_or(&self.netns);
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(kube_bin("kubectl"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            // Discovery is cached per server URL, and every test's server has the same URL.
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kubectl-cache").display()
            ))
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running kubectl: {e}"));
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("writing kubectl's stdin: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for kubectl: {e}"))
    }

    /// kubectl as cluster admin; the output whatever the status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin, None, args, None)
    }

    /// kubectl as cluster admin; stdout, or a panic with kubectl's output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `manifest` (YAML or JSON) as cluster admin, with `extra` flags such as
    /// `--dry-run=server`; kubectl's output whatever the status.
    pub fn apply_with(&self, manifest: &str, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "-f", "-"];
        args.extend(extra);
        self.kubectl_as(&self.admin, None, &args, Some(manifest))
    }

    /// `kubectl apply -f -` of `manifest` as cluster admin; panics with kubectl's output on failure.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.apply_with(manifest, &[]);
        assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers a Node object (as a kubelet does on its first start).
    pub fn register_node(&self, spec: &NodeSpec) {
        let manifest = spec.manifest().to_string();
        let out = self.kubectl_as(&self.admin, None, &["create", "-f", "-"], Some(&manifest));
        assert!(
            out.status.success(),
            "registering node {}: {}",
            spec.name,
            output_text(&out)
        );
    }

    /// The Node object `name`, or `None` when there is none.
    pub fn node(&self, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"]);
        if !out.status.success() {
            let text = output_text(&out);
            assert!(text.contains("NotFound"), "kubectl get node {name}: {text}");
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `spec.podCIDRs` of node `name` (empty while none is assigned).
    pub fn pod_cidrs(&self, name: &str) -> Vec<String> {
        self.node(name)
            .and_then(|n| n["spec"]["podCIDRs"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.as_str().map(String::from))
            .collect()
    }

    /// Waits until the controller-manager has given node `name` a podCIDR of each cluster family;
    /// returns them (IPv4 first in a dual-stack cluster ordered IPv4 first).
    pub fn wait_pod_cidrs(&self, name: &str, timeout: Duration) -> Vec<String> {
        let want = self.opts.cluster_cidrs.len();
        let mut got = Vec::new();
        if !wait_until(timeout, || {
            got = self.pod_cidrs(name);
            got.len() >= want
        }) {
            panic!(
                "node {name} got no podCIDRs within {timeout:?} (has {got:?}); controller-manager log:\n{}",
                tail(&self.log_path("kube-controller-manager"), 40)
            );
        }
        got
    }

    /// Registers `node` (name and underlay address) and waits for its podCIDR(s).
    pub fn join(&self, node: &Node) -> Vec<String> {
        let spec = NodeSpec::of(node);
        self.register_node(&spec);
        self.wait_pod_cidrs(&spec.name, Duration::from_secs(30))
    }

    /// Deletes Node object `name` and waits until it is gone.
    pub fn delete_node(&self, name: &str) {
        self.kubectl_ok(&["delete", "node", name, "--wait=true"]);
    }

    /// A token of ServiceAccount `namespace/name` (`kubectl create token`; valid for an hour).
    pub fn token(&self, namespace: &str, name: &str) -> String {
        self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])
            .trim()
            .to_string()
    }

    /// Creates ServiceAccount `namespace/name` (and the namespace) bound to the existing ClusterRole
    /// `cluster_role`, and returns a token of it.
    pub fn token_with_cluster_role(
        &self,
        namespace: &str,
        name: &str,
        cluster_role: &str,
    ) -> String {
        let binding = format!("{namespace}-{name}-{cluster_role}");
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": name, "namespace": namespace}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": binding},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": cluster_role},
                 "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
            ],
        });
        self.apply(&manifest.to_string());
        self.token(namespace, name)
    }

    /// The last lines of each component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for program in ["kube-apiserver", "kube-controller-manager"] {
            text.push_str(&format!(
                "--- {program} ---\n{}\n",
                tail(&self.log_path(program), 40)
            ));
        }
        text.push_str(&format!("--- etcd ---\n{}\n", self.etcd.log()));
        text
    }
}
