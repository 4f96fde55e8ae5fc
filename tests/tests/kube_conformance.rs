//! Kubernetes' network conformance tooling: the pinned release's `e2e.test` selects exactly the
//! focused specs, and the locally built images carry the names that release asks for and run what its
//! tests exec in them (agnhost's netexec answering `curl .../dial` and `nc -u`), under a real containerd.
//!
//! Then the focused specs themselves on a 3-node cluster (2 workers) with twill deployed by its
//! manifest, and the control run: the same cluster and suite on the reference plugins and flanneld.
//!
//! Needs root (network namespaces, containerd) and the upstream modules `kubernetes`,
//! `kubernetes-e2e`, `coredns`, `plugins`, `flannel`, `flannel-cni`; under CI=true nothing here skips.

use std::time::{Duration, Instant};

use twill_tests::bins::{ref_dir, require_root};
use twill_tests::kube::cluster::{ClusterOptions, KubeCluster};
use twill_tests::kube::conformance::{self, control, dns, images, Run, FOCUSED, MORE};
use twill_tests::netns::Netns;
use twill_tests::runtimes::containerd::Containerd;

/// A kubeconfig naming an address nothing listens on: a dry run must not need a cluster.
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:1\n\
                contexts:\n- name: none\n  context:\n    cluster: none\n    user: none\n\
                current-context: none\nusers:\n- name: none\n  user:\n    token: none\n";
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[test]
fn focus_list_selects_each_focused_spec_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all: Vec<&str> = FOCUSED.iter().chain(MORE.iter()).copied().collect();
    let mut run = Run::new("dry-run", &unreachable_kubeconfig(dir.path()), &all, 3);
    run.dry_run = true;
    let outcome = run.run();
    assert!(outcome.unmatched().is_empty(), "{}", outcome.summary());
    for name in &all {
        let hits: Vec<_> = outcome
            .specs
            .iter()
            .filter(|s| s.name.contains(name))
            .collect();
        assert_eq!(hits.len(), 1, "{name} selects {hits:?}");
        assert!(
            hits[0].name.contains("[Conformance]"),
            "{name} is a conformance spec"
        );
    }
    // A dry run "passes" every selected spec and skips the rest of the suite.
    assert_eq!(outcome.passed(), all.len(), "{}", outcome.summary());
    let ran = outcome.specs.iter().filter(|s| s.state == "passed").count();
    assert_eq!(ran, all.len(), "only the focused specs run");
    assert!(outcome.success, "{}", outcome.summary());
    let junit = run.report_dir.join("junit_01.xml");
    assert!(junit.is_file(), "JUnit report {} kept", junit.display());
}

#[test]
fn focus_regex_escapes_the_brackets_of_spec_names() {
    assert_eq!(
        conformance::focus_regex("[sig-network] a.b (c)"),
        r"\[sig-network\] a\.b \(c\)"
    );
}

#[test]
fn conformance_images_carry_the_references_the_release_lists() {
    let out = std::process::Command::new(conformance::e2e_test_bin())
        .arg("--list-images")
        .output()
        .expect("run e2e.test --list-images");
    assert!(out.status.success(), "e2e.test --list-images failed");
    let listed = String::from_utf8_lossy(&out.stdout);
    for image in images::IMAGES {
        assert!(
            listed.lines().any(|l| l.trim() == image),
            "{image} is not an image of this release's e2e suite:\n{listed}"
        );
    }
}

/// Runs `ctr` against the fixture's containerd, in the namespace it runs in.
fn ctr(c: &Containerd, args: &[&str]) -> (bool, String, String) {
    let sock = c.socket.display().to_string();
    let mut cmd = vec!["ctr", "--address", &sock, "-n", "k8s.io"];
    cmd.extend_from_slice(args);
    c.host(&cmd)
}

fn ctr_ok(c: &Containerd, args: &[&str]) -> String {
    let (ok, out, err) = ctr(c, args);
    assert!(ok, "ctr {args:?}: {err}\n{out}\n{}", c.log());
    out
}

/// Deletes the containers a test started with `ctr run` (their runc state outlives containerd).
struct Containers<'a> {
    containerd: &'a Containerd,
    ids: Vec<String>,
}

impl Containers<'_> {
    /// A container id unique to this process, recorded for deletion.
    fn id(&mut self, name: &str) -> String {
        let id = format!("{name}-{}", std::process::id());
        self.ids.push(id.clone());
        id
    }
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = ctr(self.containerd, &["task", "delete", "-f", id]);
            let _ = ctr(self.containerd, &["containers", "delete", id]);
        }
    }
}

#[test]
fn agnhost_image_answers_the_dial_requests_the_network_tests_make() {
    require_root();
    let ns = Netns::new("conf-img");
    ns.ip(&["link", "set", "lo", "up"]);
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]
    });
    let containerd = Containerd::start(&ref_dir(), &conflist, Some(ns.name()));
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = images::archive(dir.path());
    ctr_ok(
        &containerd,
        &["images", "import", &archive.display().to_string()],
    );
    let listed = ctr_ok(&containerd, &["images", "ls", "-q"]);
    for image in images::IMAGES {
        assert!(
            listed.lines().any(|l| l == image),
            "{image} imported: {listed}"
        );
    }

    let mut containers = Containers {
        containerd: &containerd,
        ids: Vec::new(),
    };
    let (server, client, sandbox) = (
        containers.id("netserver"),
        containers.id("client"),
        containers.id("sandbox"),
    );
    // The netexec server the endpoint pods run, on the namespace's loopback.
    ctr_ok(
        &containerd,
        &[
            "run",
            "-d",
            "--net-host",
            images::AGNHOST_IMAGE,
            &server,
            "/agnhost",
            "netexec",
            "--http-port=8083",
            "--udp-port=8081",
        ],
    );
    // The commands the framework execs in its test and host-network pods, from a second container.
    let script = "set -e; \
        curl -g -q -s 'http://127.0.0.1:8083/dial?request=hostname&protocol=http&host=127.0.0.1&port=8083&tries=1'; echo; \
        curl -g -q -s 'http://127.0.0.1:8083/dial?request=hostname&protocol=udp&host=127.0.0.1&port=8081&tries=1'; echo; \
        echo hostName | nc -w 1 -u 127.0.0.1 8081; echo; \
        curl -g -q -s --max-time 15 --connect-timeout 1 http://127.0.0.1:8083/hostName; echo";
    let mut out = String::new();
    let ready = twill_tests::cluster::wait_until(Duration::from_secs(30), || {
        let _ = ctr(&containerd, &["task", "delete", "-f", &client]);
        let _ = ctr(&containerd, &["containers", "delete", &client]);
        let (ok, o, e) = ctr(
            &containerd,
            &[
                "run",
                "--rm",
                "--net-host",
                images::AGNHOST_IMAGE,
                &client,
                "/bin/sh",
                "-c",
                script,
            ],
        );
        out = format!("{o}{e}");
        ok && o.lines().count() >= 4
    });
    assert!(ready, "dial commands failed:\n{out}\n{}", containerd.log());
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("\"responses\"") && lines[1].contains("\"responses\""),
        "netexec /dial answers over http and udp: {out}"
    );
    assert!(
        !lines[2].trim().is_empty() && !lines[3].trim().is_empty(),
        "nc -u and curl get the hostname: {out}"
    );

    // The pause image exits on SIGTERM, as the real one does, rather than holding up pod deletion.
    ctr_ok(
        &containerd,
        &["run", "-d", "--net-host", images::PAUSE_IMAGE, &sandbox],
    );
    std::thread::sleep(Duration::from_millis(500));
    ctr_ok(&containerd, &["task", "kill", "-s", "SIGTERM", &sandbox]);
    let start = Instant::now();
    let stopped = twill_tests::cluster::wait_until(Duration::from_secs(10), || {
        let (_, out, _) = ctr(&containerd, &["task", "ls"]);
        out.lines()
            .any(|l| l.starts_with(sandbox.as_str()) && l.contains("STOPPED"))
    });
    assert!(stopped, "pause ignored SIGTERM for {:?}", start.elapsed());
    drop(containers);
}

/// One cluster at a time: each runs 3 nodes' kubelets and containerds on a 2-core machine.
static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Cluster options for a conformance run: 3 nodes (node1 the tainted control-plane node, 2 workers),
/// kubelets pointing pods at the cluster DNS.
fn conformance_cluster_options(prefix: &str) -> ClusterOptions {
    let mut opts = ClusterOptions::default();
    opts.node.cluster_dns = vec![dns::cluster_dns_ip(&opts.kube.service_cidrs[0])];
    opts.prefix = prefix.into();
    opts
}

/// Imports the e2e images and CoreDNS on every node, deploys CoreDNS and waits until it is available:
/// the suite's first step waits for every kube-system pod to be Ready, and the Service specs resolve
/// Services by name.
fn prepare_for_conformance(cluster: &mut KubeCluster, dir: &std::path::Path) {
    let start = Instant::now();
    cluster.import_image(&images::archive(dir));
    cluster.import_image(&dns::image_archive(dir));
    let dns_ip = dns::cluster_dns_ip(&ClusterOptions::default().kube.service_cidrs[0]);
    cluster.apply(&dns::manifest(&dns_ip, 1));
    let out = cluster.kubectl(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        "--timeout=180s",
    ]);
    assert!(
        out.status.success(),
        "CoreDNS not available: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.kubectl_text(&["-n", "kube-system", "describe", "pods"]),
        cluster.logs()
    );
    eprintln!("e2e images and CoreDNS ready in {:?}", start.elapsed());
}

/// Runs the focused specs from the switch namespace (where the API server listens) and prints the
/// outcome.
fn run_focused(cluster: &KubeCluster, label: &str) -> conformance::Outcome {
    let workers = cluster.worker_names().len();
    let focus: Vec<&str> = FOCUSED.iter().chain(MORE.iter()).copied().collect();
    let mut run = Run::new(label, cluster.kubeconfig(), &focus, workers);
    run.netns = Some(cluster.switch().ns.name().to_string());
    let outcome = run.run();
    eprintln!("conformance [{label}]:\n{}", outcome.summary());
    outcome
}

#[test]
fn focused_network_conformance_specs_pass_on_twill() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut cluster = KubeCluster::start_with_twill(conformance_cluster_options("cft"));
    let dir = tempfile::tempdir().expect("temp dir");
    prepare_for_conformance(&mut cluster, dir.path());
    eprintln!("twill cluster ready for the suite in {:?}", start.elapsed());
    let outcome = run_focused(&cluster, "twill");
    outcome.assert_all_passed();
    assert_eq!(outcome.skipped(), 0, "{}", outcome.summary());
    eprintln!("twill conformance run: {:?} in all", start.elapsed());
}

/// The control run: the same cluster and suite on the current reference plugins and flanneld, so a
/// failure on twill can be told from a harness problem.
#[test]
fn focused_network_conformance_specs_pass_on_reference_plugins_and_flanneld() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut cluster = KubeCluster::start(conformance_cluster_options("cfr"));
    let dir = tempfile::tempdir().expect("temp dir");
    let flanneld = control::start_network(&cluster, dir.path());
    cluster.wait_nodes_ready(Duration::from_secs(120));
    prepare_for_conformance(&mut cluster, dir.path());
    eprintln!(
        "reference cluster ready for the suite in {:?}",
        start.elapsed()
    );
    let outcome = run_focused(&cluster, "reference");
    let logs: String = flanneld
        .iter()
        .map(|f| conformance::tail(&f.log, 15))
        .collect::<Vec<_>>()
        .join("\n");
    if outcome.passed() != outcome.focused().len() {
        eprintln!("flanneld logs:\n{logs}");
    }
    outcome.assert_all_passed();
    assert_eq!(outcome.skipped(), 0, "{}", outcome.summary());
    drop(flanneld);
    eprintln!("reference conformance run: {:?} in all", start.elapsed());
}
