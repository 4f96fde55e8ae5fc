//! twill-kube-cluster: a real Kubernetes cluster on twill (twill_tests::kube::cluster) that outlives the
//! command, for `scripts/demo.sh --kubernetes`.
//!
//!   twill-kube-cluster up --state DIR [--nodes N]   the supervisor: starts the cluster, deploys twill with its
//!                                                   manifest, a web Deployment spread over the workers and a
//!                                                   Service, writes DIR/state.json, then waits for SIGTERM
//!                                                   or SIGINT and tears everything down
//!   twill-kube-cluster report --state DIR           nodes and pods, and requests through the Service from a pod
//!   twill-kube-cluster down --state DIR             stops the supervisor, then sweeps what a killed one left
//!                                                   (processes, mounts, cgroups, namespaces tw-kdemo-*)
//!
//! Every temporary file lives under DIR (`TMPDIR=DIR/tmp`), so `down` can sweep it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::cluster::wait_until;
use twill_tests::kube::cluster::{ClusterOptions, KubeCluster};
use twill_tests::kube::kube_bin;
use twill_tests::kube::node::{remove_cgroups, task_ids};
use twill_tests::kube::workload::{import_web_image, ready_web_pods, web_deployment, WEB_PORT};

const USAGE: &str = "usage: twill-kube-cluster up|report|down --state DIR [--nodes N]";
/// Names of the cluster's namespaces start with `tw-<PREFIX>`.
const PREFIX: &str = "kdemo-";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let (mut state, mut nodes) = (None, 3u8);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--state" => state = argv.next().map(PathBuf::from),
            "--nodes" => match argv.next().and_then(|n| n.parse().ok()) {
                Some(n) if (2..=20).contains(&n) => nodes = n,
                _ => {
                    eprintln!("--nodes: 2..20\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("unknown argument {a}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(state) = state else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if std::env::var_os("TWILL_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            std::env::set_var("TWILL_BIN_DIR", dir);
        }
    }
    let result = match command.as_str() {
        "up" => up(&state, nodes),
        "report" => report(&state),
        "down" => down(&state),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twill-kube-cluster {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(state: &Path, nodes: u8) -> Result<(), String> {
    let tmp = state.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    std::env::set_var("TMPDIR", &tmp);
    std::fs::write(state.join("supervisor.pid"), std::process::id().to_string())
        .map_err(|e| format!("write the pid file: {e}"))?;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let opts = ClusterOptions {
        nodes,
        prefix: PREFIX.into(),
        ..ClusterOptions::default()
    };
    let mut cluster = KubeCluster::start_with_twill(opts);
    let images = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    import_web_image(&mut cluster, images.path());
    let workers = cluster.worker_names().len();
    cluster.apply(&web_deployment(2 * workers as u32));
    ready_web_pods(&cluster, 2 * workers);
    cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web",
        "--port=80",
        &format!("--target-port={WEB_PORT}"),
    ]);
    let info = json!({
        "switch": cluster.switch().ns.name(),
        "kubeconfig": cluster.kubeconfig(),
        "nodes": cluster.node_names(),
    });
    std::fs::write(state.join("state.json"), info.to_string())
        .map_err(|e| format!("write state.json: {e}"))?;
    println!(
        "cluster up: {} nodes, twill deployed",
        cluster.node_names().len()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("tearing down");
    drop(cluster);
    let _ = std::fs::remove_file(state.join("state.json"));
    Ok(())
}

fn load(state: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(state.join("state.json"))
        .map_err(|e| format!("no running cluster in {} ({e})", state.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("state.json: {e}"))
}

/// kubectl as cluster admin inside the switch namespace; stdout and stderr.
fn kubectl(info: &Value, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", info["switch"].as_str().unwrap_or_default()])
        .arg(kube_bin("kubectl"))
        .arg(format!(
            "--kubeconfig={}",
            info["kubeconfig"].as_str().unwrap_or_default()
        ))
        .args(args)
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("kubectl: {e}"),
    }
}

fn report(state: &Path) -> Result<(), String> {
    let info = load(state)?;
    println!("$ kubectl get nodes,pods -A -o wide");
    println!(
        "{}",
        kubectl(&info, &["get", "nodes,pods", "-A", "-o", "wide"])
    );
    println!("$ kubectl get service web");
    println!("{}", kubectl(&info, &["get", "service", "web"]));
    let pods = kubectl(
        &info,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ],
    );
    let pods: Vec<(String, String)> = pods
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect();
    let (client, client_node) = pods.first().ok_or("no web pods")?;
    let ip = kubectl(
        &info,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    println!("Requests through the Service web ({ip}:80) from pod {client} on {client_node}:");
    let cmd =
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 | tail -n 1");
    let mut cross_node = false;
    let answered = wait_until(Duration::from_secs(20), || {
        let got = kubectl(&info, &["exec", client, "--", "sh", "-c", &cmd]);
        let got = got.trim();
        if let Some((pod, node)) = pods.iter().find(|(p, _)| got == p) {
            println!("  answered by {pod} on {node}");
            cross_node |= node != client_node;
        } else {
            println!("  {got}");
        }
        cross_node
    });
    if !answered {
        return Err("no pod on another node answered through the Service".into());
    }
    println!(
        "a pod on another node answered through the Service: cross-node Service traffic works"
    );
    Ok(())
}

/// Namespaces of the demo cluster.
fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("tw-{PREFIX}")))
                .collect()
        })
        .unwrap_or_default()
}

fn down(state: &Path) -> Result<(), String> {
    let pid = std::fs::read_to_string(state.join("supervisor.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("twill-kube-cluster"))
            .unwrap_or(false)
    }) {
        // SAFETY: kill(2) on the supervisor whose pid file and command line we just checked.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = wait_until(Duration::from_secs(120), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        if !gone {
            println!("supervisor still running after 120 s: killing it and sweeping");
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // What a killed supervisor leaves: processes in the cluster's namespaces, mounts under DIR, the nodes'
    // cgroups, the namespaces.
    let mut swept = Vec::new();
    for ns in namespaces() {
        let pids = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a process living in one of the demo cluster's namespaces.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            swept.push(format!("process {pid} in {ns}"));
        }
        remove_cgroups(&format!("/twill-{ns}"));
    }
    // Pods' containers live in other network namespaces, in containerd's cgroups `/k8s.io/<id>`.
    if let Ok(dirs) = std::fs::read_dir(state.join("tmp")) {
        for d in dirs.flatten() {
            if d.file_name()
                .to_string_lossy()
                .starts_with("twill-containerd-")
            {
                for id in task_ids(&d.path()) {
                    remove_cgroups(&format!("/k8s.io/{id}"));
                    swept.push(format!("container {id}"));
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    twill_tests::runtimes::unmount_below(state);
    for ns in namespaces() {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        swept.push(format!("namespace {ns}"));
    }
    // Only a directory this program made (it holds its pid file or tmp/) is removed.
    if state.join("supervisor.pid").exists() || state.join("tmp").exists() {
        std::fs::remove_dir_all(state).map_err(|e| format!("remove {}: {e}", state.display()))?;
    }
    for s in &swept {
        println!("swept {s}");
    }
    let left = namespaces();
    if !left.is_empty() {
        return Err(format!("namespaces left: {left:?}"));
    }
    println!("down: nothing left");
    Ok(())
}
