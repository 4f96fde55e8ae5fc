//! The shell scripts' shared helpers (scripts/lib): the host snapshots scripts/demo.sh and scripts/test.sh
//! compare before and after a demo, run where a newcomer runs them — a network namespace with empty rule
//! sets — and the error trap that makes every script name the command and line it dies on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use twill_tests::bins::workspace_dir;
use twill_tests::netns::Netns;

fn lib(name: &str) -> PathBuf {
    workspace_dir().join("scripts/lib").join(name)
}

/// A bash script as the scripts start: strict mode, then the shared helpers.
fn script(body: &str) -> String {
    format!(
        "set -euo pipefail\n. '{}'\n. '{}'\n{body}\n",
        lib("common.sh").display(),
        lib("host.sh").display()
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_in(ns: &Netns, body: &str) -> Output {
    ns.exec(&["bash", "-c", &script(body)])
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Lines of `after` that are not in `before`.
fn added(before: &str, after: &str) -> Vec<String> {
    after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .map(str::to_string)
        .collect()
}

#[test]
fn host_snapshots_succeed_on_empty_rule_sets() {
    let ns = Netns::new("scr");
    // What the helpers read really is empty here, as on a fresh machine.
    assert_eq!(ns.exec_ok(&["nft", "list", "ruleset"]).trim(), "");
    let rules = ns.exec_ok(&["iptables-save"]);
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "{rules}");

    let out = run_in(&ns, "host_rules");
    assert_success("host_rules on empty rule sets", &out);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // Only the kernel's default policy rules remain.
    for line in stdout(&out).lines() {
        assert!(
            line.contains("lookup local")
                || line.contains("lookup main")
                || line.contains("lookup default"),
            "unexpected line in an empty namespace's rules: {line}"
        );
    }

    let out = run_in(&ns, "host_links");
    assert_success("host_links", &out);
    assert_eq!(stdout(&out), "lo\n");
}

#[test]
fn leftover_helpers_succeed_when_nothing_is_left() {
    let ns = Netns::new("scr");
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("state");
    let body = format!(
        "namespaces_named tw-no-such-prefix-\nprocesses_naming '{gone}'\n\
         existing_paths '{gone}' '{gone}'-*\ndemo_leftovers '{gone}'\necho done",
        gone = gone.display()
    );
    let out = run_in(&ns, &body);
    assert_success("leftover helpers with nothing left", &out);
    assert_eq!(stdout(&out), "done\n");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn host_rules_shows_what_was_added_without_counters() {
    let ns = Netns::new("scr");
    let before = stdout(&run_in(&ns, "host_rules"));
    for cmd in [
        "nft add table inet twtest",
        "nft add chain inet twtest c { type filter hook input priority 0 ; }",
        "nft add rule inet twtest c counter accept",
        "iptables -A INPUT -s 192.0.2.1/32 -j ACCEPT",
        "ip rule add from 192.0.2.2 table 100",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        ns.exec_ok(&args);
    }
    // Traffic moves the counter: the snapshot must not change with it.
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let first = run_in(&ns, "host_rules");
    assert_success("host_rules", &first);
    ns.exec_ok(&["ping", "-c", "1", "-W", "1", "127.0.0.1"]);
    let second = run_in(&ns, "host_rules");
    assert_eq!(
        stdout(&first),
        stdout(&second),
        "counters leak into the snapshot"
    );

    let new = added(&before, &stdout(&first)).join("\n");
    for expected in [
        "table inet twtest",
        "-A INPUT -s 192.0.2.1/32 -j ACCEPT",
        "from 192.0.2.2 lookup 100",
    ] {
        assert!(
            new.contains(expected),
            "{expected:?} missing from the added lines:\n{new}"
        );
    }
}

#[test]
fn demo_and_test_use_the_shared_snapshots() {
    // The helpers tested here are the ones the scripts run: neither script keeps a copy of its own.
    for name in ["demo.sh", "test.sh"] {
        let path = workspace_dir().join("scripts").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("scripts/lib/host.sh"),
            "{name} does not source lib/host.sh"
        );
        for helper in ["host_rules()", "host_links()"] {
            assert!(!text.contains(helper), "{name} defines its own {helper}");
        }
    }
}

fn bash_file(dir: &Path, body: &str) -> (PathBuf, Output) {
    let path = dir.join("script.sh");
    std::fs::write(&path, script(body)).unwrap();
    let out = Command::new("bash").arg(&path).output().unwrap();
    (path, out)
}

#[test]
fn a_dying_script_names_the_command_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // Line 4 is the first line of the body (after strict mode and the two sources).
    let (path, out) = bash_file(
        dir.path(),
        "rules() { printf 'x\\n' | grep '^-A'; }\nsnapshot() { rules | sort -u; }\nsnapshot >/dev/null\necho not reached",
    );
    assert!(!out.status.success());
    assert!(!stdout(&out).contains("not reached"));
    let err = stderr(&out);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("at {file}:4: grep '^-A'")),
        "failed command and line not named:\n{err}"
    );
    assert!(err.contains("pipeline statuses: 0 1"), "{err}");
    assert!(
        err.contains(&format!("in rules(), called from {file}:5")),
        "{err}"
    );
    assert!(
        err.contains(&format!("in snapshot(), called from {file}:6")),
        "{err}"
    );
}

#[test]
fn handled_failures_do_not_trigger_the_error_report() {
    let dir = tempfile::tempdir().unwrap();
    // The ways scripts handle a failure, including test.sh's step (a `set +e` region, status counted).
    let (_, out) = bash_file(
        dir.path(),
        r#"fails() { false; }
nomatch() { printf 'x\n' | grep '^-A'; }
fails || true
nomatch || :
if nomatch; then :; fi
! fails
fails && echo never
x="$(nomatch)" || x=none
echo "$(nomatch)"
step() { local rc; set +e; "$@" 2>&1 | cat; rc=${PIPESTATUS[0]}; set -e; return "$rc"; }
step nomatch || true
step fails || echo "step counted a failure"
echo finished"#,
    );
    assert_success("a script with handled failures", &out);
    assert!(stdout(&out).contains("step counted a failure"));
    assert!(stdout(&out).ends_with("finished\n"), "{}", stdout(&out));
    assert!(
        stderr(&out).is_empty(),
        "false error report:\n{}",
        stderr(&out)
    );
}

/// Every script runs under `pipefail`, where `writer | grep -q pattern` fails whenever grep stops reading at its
/// first match while the writer still writes (SIGPIPE, exit 141): a check that passes or fails by timing.
/// Found in the release test (the plugin's about text has two lines); no script may use the pattern.
#[test]
fn no_script_ends_a_pipeline_in_an_early_exiting_grep() {
    let mut offenders = Vec::new();
    let mut dirs = vec![workspace_dir().join("scripts")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read scripts dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sh") {
                let text = std::fs::read_to_string(&path).expect("read script");
                for (n, line) in text.lines().enumerate() {
                    let trimmed = line.trim_start();
                    if !trimmed.starts_with('#')
                        && (trimmed.contains("| grep -q") || trimmed.contains("| grep -m"))
                    {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "pipelines ending in grep -q/-m:\n{}",
        offenders.join("\n")
    );
}

/// The failure behind that rule, shown: a long writer piped into `grep -q` for its first line fails under
/// pipefail, and the same check with a grep that reads everything passes.
#[test]
fn grep_q_in_a_pipeline_fails_a_pipefail_check_that_a_full_grep_passes() {
    let writer = "for i in $(seq 1 20000); do echo \"line $i\"; done";
    let run = |check: &str| {
        Command::new("bash")
            .args(["-c", &format!("set -o pipefail; {writer} | {check}")])
            .output()
            .expect("run bash")
    };
    let quiet = run("grep -q 'line 1'");
    let full = run("grep -- 'line 1' >/dev/null");
    assert!(
        !quiet.status.success(),
        "grep -q should have cut the writer off"
    );
    assert!(full.status.success(), "{}", stderr(&full));
}
