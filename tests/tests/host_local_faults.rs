//! host-local under hostile input: `CNI_ARGS` with a repeated key (read as the reference reads it) and symbolic
//! links planted in the state directories (never written through).

mod host_local_common;

use host_local_common::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

fn run_ref_with_args(
    command: &str,
    id: &str,
    conf: &Value,
    args: &str,
) -> twill_tests::exec::Outcome {
    let mut conf = conf.clone();
    conf["cniVersion"] = json!("1.0.0");
    run(&reference(), command, id, "eth0", &conf, Some(args))
}

#[test]
fn a_repeated_cni_args_key_takes_its_last_value_as_in_the_reference() {
    for args in [
        "IP=10.72.0.10;IP=10.72.0.20",
        "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.72.0.10;IP=10.72.0.20",
        "IgnoreUnknown=0;K8S_POD_NAME=p;IP=10.72.0.20;IgnoreUnknown=1",
    ] {
        let ours_net = TestNet::new(json!({"subnet": "10.72.0.0/24"}));
        let ref_net = TestNet::new(json!({"subnet": "10.72.0.0/24"}));
        let ours = run_ours_with_args("ADD", "c1", "eth0", &ours_net.conf, args).assert_success();
        let reference = run_ref_with_args("ADD", "c1", &ref_net.conf, args).assert_success();
        assert_eq!(
            addresses(&reference),
            ["10.72.0.20/24"],
            "reference, {args}"
        );
        assert_eq!(addresses(&ours), addresses(&reference), "{args}");
        run_ours_with_args("DEL", "c1", "eth0", &ours_net.conf, args).assert_success();
        run_ref_with_args("DEL", "c1", &ref_net.conf, args).assert_success();
    }
}

/// Where a link is planted, relative to the network's paths.
#[derive(Debug, Clone, Copy)]
enum Plant {
    /// A file in the network directory (shared with the reference).
    NetFile(&'static str),
    /// Every bucket file of our index.
    IndexBuckets,
    /// A file of our own state directory (`.twill/<network>/…`).
    StateFile(&'static str),
    /// The network directory itself.
    NetDir,
    /// A directory of our own state: `.twill`, or one under `.twill/<network>` ("" for that one itself).
    TwillDir,
    StateDir(&'static str),
}

const PRECIOUS: &[u8] = b"precious content, not ours\n";

struct Victim {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::Builder::new()
            .prefix("twill-victim-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("file");
        fs::write(&file, PRECIOUS).unwrap();
        let sub = dir.path().join("dir");
        fs::create_dir(&sub).unwrap();
        Victim {
            file,
            dir: sub,
            _dir: dir,
        }
    }

    /// The victim file still holds its content and the victim directory is still empty.
    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            fs::read(&self.file).unwrap(),
            PRECIOUS,
            "{case}: file written through a link"
        );
        let inside: Vec<_> = fs::read_dir(&self.dir).unwrap().collect();
        assert!(
            inside.is_empty(),
            "{case}: files created through a link: {inside:?}"
        );
    }
}

fn replace_with_link(at: &Path, to: &Path) {
    match fs::symlink_metadata(at) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(at).unwrap(),
        Ok(_) => fs::remove_file(at).unwrap(),
        Err(_) => {}
    }
    symlink(to, at).unwrap();
}

fn plant(net: &TestNet, what: Plant, victim: &Victim) {
    let state = net.dir.path().join("data/.twill").join(net.name());
    match what {
        Plant::NetFile(name) => replace_with_link(&net.net_dir().join(name), &victim.file),
        Plant::IndexBuckets => {
            for b in 0..256 {
                replace_with_link(&state.join(format!("idx/b{b:02x}")), &victim.file);
            }
        }
        Plant::StateFile(name) => replace_with_link(&state.join(name), &victim.file),
        Plant::NetDir => replace_with_link(&net.net_dir(), &victim.dir),
        Plant::TwillDir => replace_with_link(&net.dir.path().join("data/.twill"), &victim.dir),
        Plant::StateDir("") => replace_with_link(&state, &victim.dir),
        Plant::StateDir(sub) => replace_with_link(&state.join(sub), &victim.dir),
    }
}

#[test]
fn add_and_del_never_write_through_a_planted_symlink() {
    let cases = [
        Plant::NetFile("last_reserved_ip.0"),
        Plant::NetFile("lock"),
        // The address the round-robin cursor hands out next.
        Plant::NetFile("10.73.0.3"),
        Plant::IndexBuckets,
        Plant::StateFile("idx/.stamp"),
        Plant::NetDir,
        Plant::TwillDir,
        Plant::StateDir(""),
        Plant::StateDir("idx"),
        Plant::StateDir("tmp"),
    ];
    for what in cases {
        let case = format!("{what:?}");
        let net = TestNet::new(json!({"subnet": "10.73.0.0/24"}));
        let victim = Victim::new();
        // A first attachment creates every state file and directory; then the link replaces one of them.
        run_ours("ADD", "warm", "eth0", &net.conf).assert_success();
        run_ours("DEL", "warm", "eth0", &net.conf).assert_success();
        plant(&net, what, &victim);

        let add = run_ours("ADD", "c1", "eth0", &net.conf);
        victim.assert_untouched(&case);
        if add.success() {
            let got = addresses(&add.assert_success());
            assert_eq!(got.len(), 1, "{case}: {got:?}");
            let ip = got[0].trim_end_matches("/24");
            let lease = net.net_dir().join(ip);
            let meta = fs::symlink_metadata(&lease).unwrap();
            assert!(meta.is_file(), "{case}: lease {ip} is not a regular file");
            assert_eq!(fs::read(&lease).unwrap(), b"c1\r\neth0", "{case}");
        } else {
            let err = add.assert_any_error();
            let msg = err["msg"].as_str().unwrap_or_default();
            assert!(msg.contains("symbolic link"), "{case}: unclear error {err}");
            let held: Vec<_> = net
                .leases()
                .into_iter()
                .filter(|(_, owner)| owner.starts_with("c1"))
                .collect();
            assert!(held.is_empty(), "{case}: failed ADD left {held:?}");
        }
        // STATUS, a second ADD (index and cursor now possibly rebuilt), DEL and GC keep off the target too.
        let _ = run_plain("STATUS", &net.conf);
        victim.assert_untouched(&case);
        let _ = run_ours("ADD", "c2", "eth0", &net.conf);
        victim.assert_untouched(&case);
        let _ = run_ours("DEL", "c1", "eth0", &net.conf);
        let _ = run_ours("DEL", "c2", "eth0", &net.conf);
        victim.assert_untouched(&case);
        let _ = gc(&net, Some(json!([])));
        victim.assert_untouched(&case);
        if add.success() {
            let left: Vec<_> = net
                .leases()
                .into_iter()
                .filter(|(_, owner)| owner.starts_with('c'))
                .collect();
            assert!(left.is_empty(), "{case}: DEL left {left:?}");
        }
    }
}
