//! `twill-cluster`: a twill cluster on one machine, for the demo (`scripts/demo.sh`) and for exploring. The
//! cluster logic is `twill_tests::e2e`, the same library the end-to-end tests use.
//!
//! ```text
//! twill-cluster up     --state DIR [--nodes N] [--pods M] [--prefix P] [--host-port PORT]
//! twill-cluster report --state DIR [--seconds S]
//! twill-cluster down   --state DIR [--prefix P]
//! twill-cluster status --state DIR
//! ```
//!
//! `up` is a supervisor: it builds the cluster (progress in `DIR/progress`), writes `DIR/cluster.json` and the
//! marker `DIR/ready`, then holds every guard until SIGTERM/SIGINT/SIGHUP, when it drops them (pods DEL'd,
//! daemons and etcd stopped, namespaces removed). Every namespace is named `tw-<prefix>...` and every temporary
//! file lives under DIR (`TMPDIR=DIR/tmp`), so `down` can sweep what a killed supervisor left behind.
//! Our plugins and twilld are taken from the directory this binary is in unless `TWILL_BIN_DIR` says otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_tests::e2e::{Cluster, ClusterState, Options};
use twill_tests::netns::NETNS_RUN_DIR;

const USAGE: &str = "usage:
  twill-cluster up     --state DIR [--nodes N] [--pods M] [--prefix P] [--host-port PORT]
  twill-cluster report --state DIR [--seconds S]
  twill-cluster down   --state DIR [--prefix P]
  twill-cluster status --state DIR";

/// Marker file: DIR belongs to twill-cluster (holds the prefix); `down` removes only such directories.
const MARKER: &str = ".twill-cluster";
const PID_FILE: &str = "supervisor.pid";
const STATE_FILE: &str = "cluster.json";
const READY: &str = "ready";
const FAILED: &str = "failed";
const PROGRESS: &str = "progress";
const DEFAULT_PREFIX: &str = "twdemo-";

/// Set by SIGTERM/SIGINT/SIGHUP; the supervisor polls it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    command: String,
    state: PathBuf,
    nodes: u8,
    pods: usize,
    prefix: Option<String>,
    host_port: u16,
    seconds: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().ok_or("missing command")?;
    let mut args = Args {
        command,
        state: PathBuf::new(),
        nodes: 3,
        pods: 2,
        prefix: None,
        host_port: 30080,
        seconds: 3,
    };
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        let bad = |v: &str, what: &str| format!("{flag} {v}: {what}");
        match flag.as_str() {
            "--state" => args.state = PathBuf::from(value()?),
            "--nodes" => {
                let v = value()?;
                args.nodes = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=200).contains(n))
                    .ok_or_else(|| bad(&v, "a number of nodes from 1 to 200"))?;
            }
            "--pods" => {
                let v = value()?;
                args.pods = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 200)
                    .ok_or_else(|| bad(&v, "a number of pods per node from 0 to 200"))?;
            }
            "--prefix" => {
                let v = value()?;
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(bad(&v, "letters, digits and '-' only"));
                }
                args.prefix = Some(v);
            }
            "--host-port" => {
                let v = value()?;
                args.host_port = v
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(&v, "a TCP port"))?;
            }
            "--seconds" => {
                let v = value()?;
                args.seconds = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=60).contains(s))
                    .ok_or_else(|| bad(&v, "1 to 60 seconds"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.state.as_os_str().is_empty() {
        return Err("--state DIR is required".into());
    }
    if args.state.is_relative() {
        let cwd = std::env::current_dir().map_err(|e| format!("current dir: {e}"))?;
        args.state = cwd.join(&args.state);
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("twill-cluster: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Our binaries sit next to this one (target/release) unless the caller says otherwise.
    if std::env::var_os("TWILL_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            std::env::set_var("TWILL_BIN_DIR", dir);
        }
    }
    let result = match args.command.as_str() {
        "up" => up(&args),
        "report" => report(&args),
        "down" => down(&args),
        "status" => return status(&args),
        other => Err(format!("unknown command {other}\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twill-cluster {}: {e}", args.command);
            ExitCode::FAILURE
        }
    }
}

/// The live supervisor's pid, if its pid file names a running twill-cluster.
fn live_supervisor(state: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_our_process(pid, "twill-cluster").then_some(pid)
}

/// Whether `pid` runs and its command line mentions `needle` (guards against a recycled pid).
fn is_our_process(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

fn prefix_of(args: &Args) -> String {
    args.prefix
        .clone()
        .or_else(|| {
            std::fs::read_to_string(args.state.join(MARKER))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string())
}

/// Namespaces of the cluster with this prefix (`tw-<prefix>...`).
fn cluster_namespaces(prefix: &str) -> Vec<String> {
    let start = format!("tw-{prefix}");
    let mut v: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&start))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn load_state(state: &Path) -> Result<ClusterState, String> {
    let path = state.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename {}: {e}", path.display()))
}

fn status(args: &Args) -> ExitCode {
    if let Some(pid) = live_supervisor(&args.state) {
        if args.state.join(READY).exists() {
            println!("up (supervisor pid {pid}, state {})", args.state.display());
        } else {
            println!(
                "starting (supervisor pid {pid}, state {})",
                args.state.display()
            );
        }
        return ExitCode::SUCCESS;
    }
    let ns = cluster_namespaces(&prefix_of(args));
    if args.state.join(STATE_FILE).exists() || !ns.is_empty() {
        println!(
            "stale: no supervisor, but {} namespace(s) / state in {} remain (run down)",
            ns.len(),
            args.state.display()
        );
        return ExitCode::from(4);
    }
    println!("down");
    ExitCode::from(3)
}

fn up(args: &Args) -> Result<ExitCode, String> {
    twill_tests::bins::require_root();
    let state = &args.state;
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if let Some(pid) = live_supervisor(state) {
        println!(
            "a cluster is already up (supervisor pid {pid}, state {}): use `report`, or `down` first",
            state.display()
        );
        return Ok(ExitCode::from(3));
    }
    let leftovers = cluster_namespaces(&prefix);
    if state.join(STATE_FILE).exists() || !leftovers.is_empty() {
        return Err(format!(
            "leftovers of an earlier cluster ({} namespace(s) tw-{prefix}*, state in {}): run `twill-cluster down --state {}` first",
            leftovers.len(),
            state.display(),
            state.display()
        ));
    }
    let tmp = state.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    for f in [READY, FAILED, PROGRESS] {
        let _ = std::fs::remove_file(state.join(f));
    }
    std::fs::write(state.join(MARKER), &prefix).map_err(|e| format!("write marker: {e}"))?;
    write_atomic(&state.join(PID_FILE), &std::process::id().to_string())?;
    // Every temp file (etcd's data dir, subnet.env files, twilld logs) goes under DIR, so a sweep finds it.
    std::env::set_var("TMPDIR", &tmp);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }

    let start = Instant::now();
    let progress_path = state.join(PROGRESS);
    let progress = Arc::new(move |msg: &str| {
        let line = format!("[{:5.1}s] {msg}\n", start.elapsed().as_secs_f64());
        print!("{line}");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&progress_path)
        {
            use std::io::Write;
            let _ = f.write_all(line.as_bytes());
        }
    });
    progress(&format!(
        "building a cluster of {} nodes x {} pods (namespaces tw-{prefix}*, state {})",
        args.nodes,
        args.pods,
        state.display()
    ));
    let opts = Options {
        prefix: prefix.clone(),
        nodes: args.nodes,
        pods_per_node: args.pods,
        lease_ttl: None,
        resync_secs: 10.0,
        host_port: (args.pods > 0).then_some(args.host_port),
        workdir: Some(state.join("nodes")),
        progress: progress.clone(),
        abort: Some(&STOP),
    };
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Cluster::up(opts)));
    let cluster = match built {
        Ok(c) => c,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            let _ = std::fs::write(state.join(FAILED), &msg);
            let _ = std::fs::remove_file(state.join(PID_FILE));
            progress("failed; everything built so far was removed");
            return Err(msg);
        }
    };
    let mut snapshot = cluster.state();
    snapshot.supervisor_pid = Some(std::process::id());
    let json =
        serde_json::to_string_pretty(&snapshot).map_err(|e| format!("serialise state: {e}"))?;
    write_atomic(&state.join(STATE_FILE), &json)?;
    std::fs::write(state.join(READY), "").map_err(|e| format!("write ready marker: {e}"))?;
    progress("cluster ready; holding it until SIGTERM (twill-cluster down)");

    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    progress("signal received: deleting pods, stopping twilld and etcd, removing namespaces");
    let _ = std::fs::remove_file(state.join(READY));
    drop(cluster);
    let _ = std::fs::remove_file(state.join(STATE_FILE));
    let _ = std::fs::remove_dir_all(&tmp);
    progress("torn down");
    let _ = std::fs::remove_file(state.join(PID_FILE));
    Ok(ExitCode::SUCCESS)
}

fn report(args: &Args) -> Result<ExitCode, String> {
    twill_tests::bins::require_root();
    let state = load_state(&args.state)?;
    if live_supervisor(&args.state).is_none() {
        return Err(format!(
            "no live supervisor for {}: the cluster is not up",
            args.state.display()
        ));
    }
    let mut healthy = true;

    println!("== Leases (etcd /coreos.com/network/subnets, next to each node's kernel) ==");
    match state.lease_table() {
        Ok(rows) => {
            print!("{}", state.render_lease_table(&rows));
            if rows.len() != state.nodes.len()
                || rows
                    .iter()
                    .any(|r| r.kernel_mac.as_deref() != Some(r.lease.vtep_mac.as_str()))
            {
                healthy = false;
            }
        }
        Err(e) => {
            println!("cannot read leases: {e}");
            healthy = false;
        }
    }

    println!(
        "\n== Pod-to-pod matrix ({} pods on {} nodes) ==",
        state.pods.len(),
        state.nodes.len()
    );
    let matrix = state.wait_full_matrix(Duration::from_secs(5));
    print!("{}", matrix.render());
    for f in matrix.failures() {
        println!("  unreachable: {f}");
    }
    healthy &= matrix.is_full();

    println!("\n== Host ports (portmap): <node IP>:<hostPort> from other nodes and their pods ==");
    match state.host_port_check() {
        Ok(checks) if checks.is_empty() => println!("no pod has a host port"),
        Ok(checks) => {
            for c in &checks {
                let answer = match &c.answer {
                    Ok(a) => format!("{:?}", a.trim()),
                    Err(e) => format!("error: {e}"),
                };
                println!(
                    "{:<4} {:<14} -> {:<44} {}",
                    if c.ok() { "ok" } else { "FAIL" },
                    c.from,
                    c.target,
                    answer
                );
            }
            let ok = checks.iter().filter(|c| c.ok()).count();
            println!(
                "{ok}/{} host-port connections answered by the right pod",
                checks.len()
            );
            healthy &= ok == checks.len();
        }
        Err(e) => {
            println!("host-port check failed: {e}");
            healthy = false;
        }
    }

    println!("\n== Throughput (iperf3) ==");
    match state.throughput(args.seconds) {
        Ok(t) => print!("{}", t.render()),
        Err(e) => println!("skipped: {e}"),
    }

    println!("\n== Explore (the cluster stays up) ==");
    print!("{}", state.explore_hints());
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn down(args: &Args) -> Result<ExitCode, String> {
    twill_tests::bins::require_root();
    let state_dir = &args.state;
    let prefix = prefix_of(args);
    let recorded = load_state(state_dir).ok();
    let mut swept = Vec::new();
    // Processes someone started inside a pod while exploring would keep the pod's namespace alive after its
    // name is removed; stop them first (the supervisor stops twilld and etcd itself).
    for ns in cluster_namespaces(&prefix)
        .into_iter()
        .filter(|n| n.contains("-pod"))
    {
        swept.extend(kill_namespace_processes(&ns));
    }
    if let Some(pid) = live_supervisor(state_dir) {
        println!("stopping the supervisor (pid {pid}) ...");
        // SAFETY: kill(2) on a pid we just checked runs twill-cluster.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        while is_our_process(pid, "twill-cluster") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_our_process(pid, "twill-cluster") {
            println!("supervisor still running after 120 s: killing it and sweeping");
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        } else {
            println!("supervisor exited");
        }
    }
    // Whatever a killed supervisor left: processes inside our namespaces (twilld, etcd, iperf3), the
    // namespaces, temp files, the state dir.
    for pid in recorded
        .iter()
        .flat_map(|s| s.nodes.iter().filter_map(|n| n.twilld_pid))
    {
        // The daemon's command line names its subnet file under DIR: a recycled pid is left alone.
        if is_our_process(pid, "twilld") && is_our_process(pid, &state_dir.display().to_string()) {
            // SAFETY: kill(2) on a pid whose command line is twilld, recorded by our supervisor.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            swept.push(format!("process {pid} (twilld)"));
        }
    }
    // twilld and etcd whose namespace name was already removed (e.g. by scripts/test.sh's stale-namespace
    // cleanup) are found by the state dir on their command line (--subnet-file, --data-dir).
    let state_text = state_dir.display().to_string();
    for pid in processes_naming(&state_text) {
        if (is_our_process(pid, "twilld") || is_our_process(pid, "etcd"))
            && !swept
                .iter()
                .any(|s| s.starts_with(&format!("process {pid} ")))
        {
            // SAFETY: kill(2) on a twilld/etcd whose command line names our state dir.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            swept.push(format!("process {pid} (command line names {state_text})"));
        }
    }
    for ns in cluster_namespaces(&prefix) {
        swept.extend(kill_namespace_processes(&ns));
        let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
        swept.push(format!("namespace {ns}"));
    }
    let tmp = std::env::temp_dir();
    if let Ok(dir) = std::fs::read_dir(&tmp) {
        for e in dir.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("tw-{prefix}"))
            {
                let _ = std::fs::remove_file(e.path());
                swept.push(format!("file {}", e.path().display()));
            }
        }
    }
    if state_dir.join(MARKER).exists() {
        std::fs::remove_dir_all(state_dir)
            .map_err(|e| format!("remove {}: {e}", state_dir.display()))?;
    } else if state_dir.exists() {
        println!(
            "{} has no {MARKER} marker: not removing it",
            state_dir.display()
        );
    }
    if swept.is_empty() {
        println!("nothing left to sweep");
    } else {
        println!("swept what the supervisor could not clean up itself:");
        for s in &swept {
            println!("  {s}");
        }
    }
    let remaining = cluster_namespaces(&prefix);
    if !remaining.is_empty() {
        return Err(format!("namespaces still present: {}", remaining.join(" ")));
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGKILLs every process living in namespace `ns` (never this one); returns what it killed.
fn kill_namespace_processes(ns: &str) -> Vec<String> {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut killed = Vec::new();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid as u32 != std::process::id() {
            // SAFETY: kill(2) on a process living in one of our cluster's namespaces.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(format!("process {pid} (in {ns})"));
        }
    }
    killed
}

/// Pids of processes whose command line contains `needle` (never this one).
fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id() && is_our_process(*pid, needle))
        .collect()
}
