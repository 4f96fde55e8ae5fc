//! `twill-cluster`, the CLI behind `scripts/demo.sh`: `up` supervises a cluster until told to stop, `report`
//! checks it from another process, a second `up` refuses, `down` stops the supervisor and leaves nothing; and
//! when the supervisor was killed, `down` sweeps its namespaces and processes by name. Needs the plugins and
//! twilld next to the binary: `cargo build --workspace --bins`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use twill_tests::cluster::wait_until;
use twill_tests::e2e::ClusterState;
use twill_tests::netns::NETNS_RUN_DIR;

const CLI: &str = env!("CARGO_BIN_EXE_twill-cluster");

fn cli(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {CLI}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("tw-{prefix}")))
                .collect()
        })
        .unwrap_or_default()
}

/// A supervisor child; killed and reaped on drop if the test fails half-way.
struct Supervisor(Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(state: &Path, prefix: &str) -> Supervisor {
    let log = std::fs::File::create(state.with_extension("log")).expect("log file");
    let child = Command::new(CLI)
        .args(["up", "--nodes", "2", "--pods", "1", "--prefix", prefix])
        .arg("--state")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {CLI}: {e}"));
    let sup = Supervisor(child);
    assert!(
        wait_until(Duration::from_secs(60), || state.join("ready").exists()),
        "cluster not ready:\n{}",
        std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
    );
    sup
}

#[test]
fn cli_up_report_refused_second_up_and_down_leave_nothing() {
    twill_tests::bins::require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let state = base.path().join("state");
    let prefix = format!("twcli{}a-", std::process::id());
    let mut sup = start(&state, &prefix);
    let st = state.to_str().expect("utf-8 path");

    let report = cli(&["report", "--state", st, "--seconds", "1"]);
    assert!(report.status.success(), "{}", text(&report));
    let out = text(&report);
    assert!(out.contains("2/2 pod pairs reachable"), "{out}");
    assert!(
        out.contains("4/4 host-port connections answered by the right pod"),
        "{out}"
    );
    assert!(out.contains("Gbit/s"), "{out}");

    let again = cli(&["up", "--state", st, "--prefix", &prefix]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(text(&again).contains("already up"), "{}", text(&again));

    let down = cli(&["down", "--state", st]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        text(&down).contains("nothing left to sweep"),
        "{}",
        text(&down)
    );
    let status = sup.0.wait().expect("supervisor exit");
    assert!(status.success(), "supervisor exited with {status}");
    assert!(namespaces(&prefix).is_empty(), "{:?}", namespaces(&prefix));
    assert!(!state.exists(), "state dir left behind");
}

#[test]
fn cli_down_sweeps_what_a_killed_supervisor_left() {
    twill_tests::bins::require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let state = base.path().join("state");
    let prefix = format!("twcli{}b-", std::process::id());
    let mut sup = start(&state, &prefix);
    let st = state.to_str().expect("utf-8 path");
    let recorded: ClusterState = serde_json::from_str(
        &std::fs::read_to_string(state.join("cluster.json")).expect("cluster.json"),
    )
    .expect("parse cluster.json");
    let daemons: Vec<u32> = recorded.nodes.iter().filter_map(|n| n.twilld_pid).collect();
    assert_eq!(daemons.len(), 2);

    sup.0.kill().expect("SIGKILL the supervisor");
    sup.0.wait().expect("reap the supervisor");
    assert_eq!(cli(&["status", "--state", st]).status.code(), Some(4));
    assert!(!namespaces(&prefix).is_empty());
    // The switch's name is removed behind our back (as scripts/test.sh does for namespaces of dead pids):
    // etcd keeps running in the nameless namespace and must still be found, by its data dir under DIR.
    let switch = recorded.switch_ns.clone();
    let out = Command::new("ip")
        .args(["netns", "delete", &switch])
        .output()
        .expect("ip netns delete");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!naming(st).is_empty(), "etcd and twilld name the state dir");

    let down = cli(&["down", "--state", st]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("swept"), "{}", text(&down));
    assert!(namespaces(&prefix).is_empty(), "{:?}", namespaces(&prefix));
    assert!(!state.exists(), "state dir left behind");
    // The orphaned daemons (and etcd) are gone; a zombie would show as state Z until init reaps it.
    assert!(
        wait_until(Duration::from_secs(5), || daemons.iter().all(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        })),
        "twilld {daemons:?} still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || naming(st).is_empty()),
        "still running: {:?}",
        naming(st)
    );
    assert_eq!(cli(&["status", "--state", st]).status.code(), Some(3));
}

/// Live (non-zombie) processes whose command line contains `needle`.
fn naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter_map(|e| {
                    let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    (cmd.contains(needle) && !stat.contains(") Z ")).then_some(cmd)
                })
                .collect()
        })
        .unwrap_or_default()
}
