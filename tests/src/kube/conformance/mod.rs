//! Kubernetes' own network conformance tests run against a cluster: `e2e.test` of the pinned release
//! (`tests/upstream/kubernetes-e2e`) driven by the ginkgo CLI of the version that release pins, with the
//! skeleton provider (no cloud, no ssh to nodes), a focus list, and the JUnit and ginkgo JSON reports
//! kept under `target/conformance/<label>/`. The outcome is read back from the JSON report, spec by
//! spec, so a caller can assert that every focused spec ran and passed rather than trusting an exit code
//! (a spec that skips itself exits 0).
//!
//! What the focused specs need from a cluster: ready schedulable nodes (the netexec pods go one per node;
//! the HostPort spec uses one node and its InternalIP), `hostNetwork` pods, `pods/exec` through the API
//! server to the kubelets (`kubectl exec` too: `--kubectl-path` is the release's kubectl), kube-proxy
//! for ClusterIP Services, the endpoint-slice, service-account and namespace controllers, the images of
//! [`images`] on every node, and cluster DNS for the Service spec (it dials the Service by name).

pub mod control;
pub mod dns;
pub mod images;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The focused specs, as the e2e suite names them (without their trailing `[...]` tags).
pub const FOCUSED: [&str; 6] = [
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http",
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp",
    "[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http",
    "[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp",
    "[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different hostIP and protocol",
    "[sig-network] Services should serve a basic endpoint from pods",
];

/// More `[sig-network] [Conformance]` specs the test cluster serves: the data path of Services
/// (multiple ports, both protocols on one port, NodePorts reached at the nodes' InternalIPs, session
/// affinity by ClusterIP and NodePort) and a Service found by name after a type change (cluster DNS).
/// Left out: the DNS specs (they need `dig` and resolver files of upstream's Alpine image), the proxy
/// specs (the API server, in the switch namespace, has no route to pod IPs, which a real control plane
/// on a node has), the endpoint latency spec (hundreds of Services: minutes on this machine) and
/// API-only specs that no network plugin can affect.
pub const MORE: [&str; 6] = [
    "[sig-network] Services should serve multiport endpoints from pods",
    "[sig-network] Services should serve endpoints on same port and different protocols",
    "[sig-network] Services should be able to create a functioning NodePort service",
    "[sig-network] Services should have session affinity work for service with type clusterIP",
    "[sig-network] Services should have session affinity work for NodePort service",
    "[sig-network] Services should be able to change the type from ExternalName to ClusterIP",
];

/// The e2e test binary of the pinned release.
pub fn e2e_test_bin() -> PathBuf {
    crate::bins::upstream_bin("kubernetes-e2e", "e2e.test")
}

/// The ginkgo CLI of the version the pinned release's go.mod names.
pub fn ginkgo_bin() -> PathBuf {
    crate::bins::upstream_bin("kubernetes-e2e", "ginkgo")
}

/// `<target>/conformance/<label>`: where a run's reports and log are kept.
pub fn report_dir(label: &str) -> PathBuf {
    crate::bins::target_dir().join("conformance").join(label)
}

/// Ginkgo's focus is a regular expression; the spec names are literal text with brackets and dots.
pub fn focus_regex(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One conformance run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Kubeconfig of a cluster admin.
    pub kubeconfig: PathBuf,
    /// Network namespace to run the suite in (one from which the API server is reachable); `None`
    /// runs it in the caller's.
    pub netns: Option<String>,
    /// Spec names (literal, see [`FOCUSED`]); a spec runs when its full name contains one.
    pub focus: Vec<String>,
    /// `--num-nodes`: the cluster's schedulable nodes.
    pub num_nodes: usize,
    /// Where the JUnit (`junit_01.xml`), ginkgo reports (`ginkgo/report.{json,xml}`) and `e2e.log` go;
    /// emptied first.
    pub report_dir: PathBuf,
    /// Ginkgo parallel processes (`--procs`); 1 runs the specs one after the other.
    pub procs: usize,
    /// Ginkgo's suite timeout; the whole process group is also killed a minute after it.
    pub timeout: Duration,
    /// `--dry-run`: walk the focused specs without a cluster (checks the focus list).
    pub dry_run: bool,
}

impl Run {
    /// A run of `focus` against the cluster of `kubeconfig`, reports under `report_dir(label)`.
    pub fn new(label: &str, kubeconfig: &Path, focus: &[&str], num_nodes: usize) -> Run {
        Run {
            kubeconfig: kubeconfig.to_path_buf(),
            netns: None,
            focus: focus.iter().map(|s| s.to_string()).collect(),
            num_nodes,
            report_dir: report_dir(label),
            procs: 1,
            timeout: Duration::from_secs(30 * 60),
            dry_run: false,
        }
    }

    /// The command line: ginkgo's flags, the binary, then the e2e framework's own flags.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(ginkgo_bin());
                c
            }
            None => Command::new(ginkgo_bin()),
        };
        cmd.arg("run")
            .arg(format!("--procs={}", self.procs.max(1)))
            .arg(format!("--timeout={}s", self.timeout.as_secs()))
            .args(["--no-color", "-v"]);
        for f in &self.focus {
            cmd.arg(format!("--focus={}", focus_regex(f)));
        }
        if self.dry_run {
            cmd.arg("--dry-run");
        }
        cmd.arg(e2e_test_bin()).arg("--");
        cmd.arg("--provider=skeleton")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--kubectl-path={}",
                crate::kube::kube_bin("kubectl").display()
            ))
            .arg(format!("--num-nodes={}", self.num_nodes))
            .arg(format!("--report-dir={}", self.report_dir.display()))
            .arg("--report-complete-ginkgo")
            // Images are built locally and imported on every node: a pull would fail.
            .arg("--prepull-images=false")
            .arg("--dump-logs-on-failure=true");
        cmd
    }

    /// Runs the suite; returns what the JSON report says about every spec, or panics when the
    /// suite produced no report (it could not start: the log says why).
    pub fn run(&self) -> Outcome {
        let _ = std::fs::remove_dir_all(&self.report_dir);
        std::fs::create_dir_all(&self.report_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.report_dir.display()));
        // The suite's temporary files go under the report directory, which the next run replaces: building its
        // spec tree, every e2e.test process creates a `test-kuberc*` directory it cannot remove (`os.Remove` of
        // a directory it wrote a file into), whichever specs are focused.
        let tmp = self.report_dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        let log_path = self.report_dir.join("e2e.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let mut cmd = self.command();
        // Its own process group: ginkgo starts one e2e.test per process, and a kill must reach them.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            // The suite reads KUBECONFIG when --kubeconfig is empty; never the caller's.
            .env_remove("KUBECONFIG")
            .env("TMPDIR", &tmp);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let deadline = self.timeout + Duration::from_secs(60);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() > deadline => {
                    // SAFETY: kill has no memory preconditions; the group is the one we created.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(500)),
                Err(e) => panic!("wait for ginkgo: {e}"),
            }
        };
        let duration = start.elapsed();
        let report = self.report_dir.join("ginkgo/report.json");
        let specs = match std::fs::read_to_string(&report) {
            Ok(text) => parse_report(&text),
            Err(e) => panic!(
                "the e2e suite wrote no report {} ({e}); exit {status:?}; its log {}:\n{}",
                report.display(),
                log_path.display(),
                tail(&log_path, 80)
            ),
        };
        Outcome {
            focus: self.focus.clone(),
            specs,
            duration,
            success: status.map(|s| s.success()).unwrap_or(false),
            timed_out: status.is_none(),
            log: log_path,
        }
    }
}

/// The last `lines` lines of a file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One spec of the suite as the report gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Containers' texts and the spec's own, joined by spaces, tags included.
    pub name: String,
    /// Ginkgo's state: `passed`, `failed`, `skipped`, `pending`, `panicked`, `timedout`, ...
    pub state: String,
    pub runtime: Duration,
    /// The failure (or skip) message, when there is one.
    pub message: Option<String>,
}

/// Reads the `It` specs out of a ginkgo JSON report (`--json-report` / `--report-complete-ginkgo`).
pub fn parse_report(text: &str) -> Vec<Spec> {
    let reports: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("ginkgo report: {e}"));
    let mut specs = Vec::new();
    for report in reports.as_array().into_iter().flatten() {
        for spec in report["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            parts.push(spec["LeafNodeText"].as_str().unwrap_or(""));
            let message = spec["Failure"]["Message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            specs.push(Spec {
                name: parts.join(" "),
                state: spec["State"].as_str().unwrap_or("unknown").to_string(),
                runtime: Duration::from_nanos(spec["RunTime"].as_u64().unwrap_or(0)),
                message,
            });
        }
    }
    specs
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub focus: Vec<String>,
    /// Every spec of the suite, the unfocused ones `skipped`.
    pub specs: Vec<Spec>,
    pub duration: Duration,
    /// ginkgo exited 0.
    pub success: bool,
    /// The run was killed at its deadline.
    pub timed_out: bool,
    pub log: PathBuf,
}

impl Outcome {
    /// The specs one of the focus names selects.
    pub fn focused(&self) -> Vec<&Spec> {
        self.specs
            .iter()
            .filter(|s| self.focus.iter().any(|f| s.name.contains(f.as_str())))
            .collect()
    }

    /// How many focused specs ended in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.focused().iter().filter(|s| s.state == state).count()
    }

    pub fn passed(&self) -> usize {
        self.count("passed")
    }

    /// Focused specs that neither passed nor were skipped.
    pub fn failed(&self) -> usize {
        self.focused()
            .iter()
            .filter(|s| s.state != "passed" && s.state != "skipped")
            .count()
    }

    pub fn skipped(&self) -> usize {
        self.count("skipped")
    }

    /// Focus names no spec of the suite matches (a typo, or a spec renamed in another release).
    pub fn unmatched(&self) -> Vec<&str> {
        self.focus
            .iter()
            .filter(|f| !self.specs.iter().any(|s| s.name.contains(f.as_str())))
            .map(String::as_str)
            .collect()
    }

    /// One line per focused spec (state, seconds, name) and the totals, for logs and assertions.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in self.focused() {
            out.push_str(&format!(
                "{:>8} {:>6.1}s {}\n",
                s.state,
                s.runtime.as_secs_f64(),
                s.name
            ));
            if s.state != "passed" {
                if let Some(m) = &s.message {
                    let first: String = m.lines().take(3).collect::<Vec<_>>().join(" / ");
                    out.push_str(&format!("           {first}\n"));
                }
            }
        }
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped of {} focused specs in {:.0} s (log {})",
            self.passed(),
            self.failed(),
            self.skipped(),
            self.focused().len(),
            self.duration.as_secs_f64(),
            self.log.display()
        ));
        out
    }

    /// Panics (with the summary and the log's tail) unless every focus name matched at least one spec,
    /// every focused spec passed and the suite exited 0.
    pub fn assert_all_passed(&self) {
        let unmatched = self.unmatched();
        let ok = unmatched.is_empty()
            && !self.focused().is_empty()
            && self.passed() == self.focused().len()
            && self.success;
        if !ok {
            panic!(
                "conformance run failed{}{}:\n{}\n--- log tail ---\n{}",
                if self.timed_out { " (timed out)" } else { "" },
                if unmatched.is_empty() {
                    String::new()
                } else {
                    format!("; no spec matches {unmatched:?}")
                },
                self.summary(),
                tail(&self.log, 60)
            );
        }
    }
}
