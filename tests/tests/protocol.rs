//! The CNI protocol layer seen from outside (docs/cni-spec-notes.md §2, §6, §7): a table of bad inputs, each
//! checked for the right error object and code on stdout, a non-zero exit, no panic and no partial
//! state. The table runs against every plugin binary listed in `PLUGINS`, each run inside a
//! test-created node namespace.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use twill_tests::bins::{bin, require_root};
use twill_tests::exec::{Invocation, UnsetVars, ALL_VERSIONS};
use twill_tests::netns::Netns;

/// A plugin binary under test.
struct Plugin {
    name: &'static str,
    /// Whether the plugin rejects a `CNI_NETNS` that is not a network namespace: those that enter it on ADD
    /// (skel checks it for them). host-local and portmap never look at the path, as the reference's, and
    /// flannel leaves it to its delegate (tests/tests/host_local_netns.rs).
    opens_netns: bool,
}

/// Plugin binaries the tables run against. A plugin's [`minimal_config`] must pass its own
/// validation, so that only the injected fault is under test.
const PLUGINS: &[Plugin] = &[
    Plugin {
        name: "loopback",
        opens_netns: true,
    },
    Plugin {
        name: "bridge",
        opens_netns: true,
    },
    Plugin {
        name: "host-local",
        opens_netns: false,
    },
    Plugin {
        name: "portmap",
        opens_netns: false,
    },
    Plugin {
        name: "flannel",
        opens_netns: false,
    },
    Plugin {
        name: "bandwidth",
        opens_netns: true,
    },
    Plugin {
        name: "firewall",
        opens_netns: false,
    },
    Plugin {
        name: "ptp",
        opens_netns: true,
    },
    Plugin {
        name: "tuning",
        opens_netns: true,
    },
    Plugin {
        name: "static",
        opens_netns: false,
    },
    Plugin {
        name: "sbr",
        opens_netns: true,
    },
    Plugin {
        name: "macvlan",
        opens_netns: true,
    },
    Plugin {
        name: "host-device",
        opens_netns: true,
    },
    Plugin {
        name: "tap",
        opens_netns: true,
    },
    Plugin {
        name: "dhcp",
        opens_netns: false,
    },
];

/// What a row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exit 0 with an "about" text on stderr and nothing on stdout (unset `CNI_COMMAND`, skel).
    About,
    /// A CNI error object with this code.
    Code(u64),
    /// Any CNI error object: the spec fixes no code (e.g. a netns path that is not a namespace).
    AnyError,
}

/// Turns a valid ADD (libcni-style env, fresh pod namespace) and its config into the faulty request.
type Fault = Box<dyn Fn(Invocation, &Value) -> Invocation>;

struct Case {
    name: &'static str,
    expect: Expect,
    fault: Fault,
    /// The row is about what `CNI_NETNS` points at (see [`Plugin::opens_netns`]).
    netns_content: bool,
}

fn case(
    name: &'static str,
    expect: Expect,
    fault: impl Fn(Invocation, &Value) -> Invocation + 'static,
) -> Case {
    Case {
        name,
        expect,
        fault: Box::new(fault),
        netns_content: false,
    }
}

fn netns_case(
    name: &'static str,
    fault: impl Fn(Invocation, &Value) -> Invocation + 'static,
) -> Case {
    Case {
        netns_content: true,
        ..case(name, Expect::AnyError, fault)
    }
}

/// The bad-input table: one faulty request per row, each with the answer it must get.
fn cases() -> Vec<Case> {
    use Expect::*;
    let without = |key: &'static str| {
        move |inv: Invocation, conf: &Value| {
            let mut conf = conf.clone();
            conf.as_object_mut().map(|o| o.remove(key));
            inv.stdin_json(&conf)
        }
    };
    let with = |key: &'static str, value: Value| {
        move |inv: Invocation, conf: &Value| {
            let mut conf = conf.clone();
            conf[key] = value.clone();
            inv.stdin_json(&conf)
        }
    };
    let ifname = |name: &'static str| move |inv: Invocation, _: &Value| inv.ifname(Some(name));
    let id = |id: &'static str| move |inv: Invocation, _: &Value| inv.container_id(Some(id));
    vec![
        case("no CNI_COMMAND", About, |inv, _| inv.command(None)),
        case("unknown verb", Code(4), |inv, _| inv.command(Some("FROB"))),
        case("stdin not JSON", Code(6), |inv, _| {
            inv.stdin_bytes("{not json")
        }),
        case("missing name", Code(7), without("name")),
        case(
            "unsupported cniVersion",
            Code(1),
            with("cniVersion", json!("9.9.9")),
        ),
        case("empty container id", Code(4), id("")),
        case("container id unset", Code(4), |inv, _| {
            inv.container_id(None)
        }),
        case("container id with /", Code(4), id("abc/def")),
        case("container id starting with -", Code(4), id("-abc")),
        case(
            "ifname longer than 15 bytes",
            Code(4),
            ifname("abcdefghijklmnop"),
        ),
        case("ifname .", Code(4), ifname(".")),
        case("ifname ..", Code(4), ifname("..")),
        case("ifname with /", Code(4), ifname("et/h0")),
        case("ifname with :", Code(4), ifname("eth0:1")),
        case("ifname with space", Code(4), ifname("eth 0")),
        case("empty ifname", Code(4), ifname("")),
        case("ADD without CNI_NETNS", Code(4), |inv, _| {
            inv.netns_str(None)
        }),
        case(
            "ADD with CNI_NETNS absent from the env",
            Code(4),
            |inv, _| {
                let mut inv = inv.netns_str(None);
                inv.unset_vars = UnsetVars::Absent;
                inv
            },
        ),
        netns_case("CNI_NETNS missing file", |inv, _| {
            inv.netns_str(Some("/run/netns/twill-no-such-namespace"))
        }),
        netns_case("CNI_NETNS not a namespace", |inv, _| {
            inv.netns_str(Some("/proc/self/status"))
        }),
        netns_case("CNI_NETNS a directory", |inv, _| {
            inv.netns_str(Some("/run"))
        }),
        case("DEL with empty container id", Code(4), |inv, _| {
            inv.command(Some("DEL")).container_id(Some(""))
        }),
        case("CHECK with bad ifname", Code(4), |inv, _| {
            inv.command(Some("CHECK")).ifname(Some("eth 0"))
        }),
    ]
}

/// A valid config for `plugin` whose state (IPAM store, saved delegate configs) lives in `scratch`.
fn minimal_config(plugin: &str, scratch: &Path) -> Value {
    let mut conf = json!({"cniVersion": "1.0.0", "name": "twill-protocol", "type": plugin});
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.250.0.2/24", "interface": 0}]
    });
    match plugin {
        "bridge" => {
            conf["bridge"] = json!("twproto0");
            conf["ipam"] = json!({});
        }
        "host-local" => {
            conf["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/24"}]],
                "dataDir": scratch.join("ipam")});
        }
        "portmap" => {
            conf["capabilities"] = json!({"portMappings": true});
            conf["prevResult"] = prev;
        }
        "bandwidth" => {
            conf["ingressRate"] = json!(1_000_000);
            conf["ingressBurst"] = json!(100_000);
            conf["prevResult"] = prev;
        }
        "firewall" => {
            conf["backend"] = json!("iptables");
            conf["prevResult"] = prev;
        }
        "ptp" => {
            conf["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/24"}]],
                "dataDir": scratch.join("ipam")});
        }
        "tuning" => {
            conf["dataDir"] = json!(scratch.join("tuning"));
            conf["mtu"] = json!(1400);
            conf["prevResult"] = prev;
        }
        "macvlan" => {
            // The test node has only `lo`: enough for the config to pass validation.
            conf["master"] = json!("lo");
        }
        "host-device" => {
            // Valid for the config check; every row fails before a device would move.
            conf["device"] = json!("lo");
        }
        "dhcp" => {
            // No daemon listens there: every row must fail before the daemon would be asked.
            conf["ipam"] = json!({"type": "dhcp", "daemonSocketPath": scratch.join("dhcp.sock")});
        }
        "static" => {
            conf["ipam"] = json!({"type": "static", "addresses": [{"address": "10.250.0.2/24"}]});
        }
        "sbr" => {
            conf["prevResult"] = prev;
        }
        "flannel" => {
            conf["subnetFile"] = json!(scratch.join("missing/subnet.env"));
            conf["dataDir"] = json!(scratch.join("flannel"));
        }
        _ => {}
    }
    conf
}

/// Runs one row against one plugin; returns a description of what went wrong, if anything.
fn check_case(plugin: &str, path: &Path, scratch: &Path, case: &Case) -> Result<(), String> {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let (node_before, pod_before) = (node.state(), pod.state());
    let conf = minimal_config(plugin, scratch);
    let valid = Invocation::new(path, "ADD")
        .libcni_style()
        .container_id(Some("twill-protocol"))
        .netns(Some(pod.path()))
        .stdin_json(&conf)
        .in_netns(node.path());
    let invocation = (case.fault)(valid, &conf);
    let outcome = invocation.run();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match case.expect {
            Expect::About => {
                outcome.assert_no_panic();
                assert!(outcome.success(), "expected exit 0: {}", outcome.describe());
                assert!(
                    !outcome.stderr.trim().is_empty(),
                    "expected an about text on stderr: {}",
                    outcome.describe()
                );
                assert!(
                    outcome.stdout.trim().is_empty(),
                    "expected no stdout: {}",
                    outcome.describe()
                );
            }
            Expect::Code(code) => {
                outcome.assert_error(code);
            }
            Expect::AnyError => {
                outcome.assert_any_error();
            }
        }
        node.state().assert_nothing_added_since(&node_before);
        pod.state().assert_nothing_added_since(&pod_before);
        assert!(
            !pod.link_is_up("lo"),
            "a failed request left lo up in the pod namespace"
        );
    }));
    checked.map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string());
        format!("{plugin}: {}: {msg}", case.name)
    })
}

/// Runs the whole table against `plugin` and reports every failing row at once.
fn run_table(plugin: &Plugin) {
    let path: PathBuf = bin(plugin.name);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let failures: Vec<String> = cases()
        .iter()
        .filter(|case| plugin.opens_netns || !case.netns_content)
        .filter_map(|case| check_case(plugin.name, &path, scratch.path(), case).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} bad-input rows failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn bad_input_gets_the_right_cni_error_from_every_plugin() {
    require_root();
    for plugin in PLUGINS {
        run_table(plugin);
    }
}

/// What a plugin's VERSION lists: every version, but from 0.3.0 on for the chained plugins that refuse older
/// configs (they need `prevResult`), as the reference's bandwidth does (its firewall starts at 0.4.0; ours takes
/// 0.3.x too).
fn supported_versions(plugin: &str) -> &'static [&'static str] {
    match plugin {
        "bandwidth" | "firewall" => &ALL_VERSIONS[2..],
        _ => &ALL_VERSIONS,
    }
}

#[test]
fn version_answers_1_1_0_with_every_supported_version() {
    require_root();
    for plugin in PLUGINS.iter().map(|p| p.name) {
        let versions = supported_versions(plugin);
        // skel answers VERSION from its own state and ignores stdin (docs/cni-spec-notes.md §4 VERSION), so
        // neither libcni's probe nor an empty stdin may change the answer.
        for stdin in [r#"{"cniVersion":"1.0.0"}"#, "", "{not json"] {
            let answer = Invocation::bare(bin(plugin))
                .command(Some("VERSION"))
                .stdin_bytes(stdin)
                .run()
                .assert_success();
            assert_eq!(
                answer,
                json!({"cniVersion": "1.1.0", "supportedVersions": versions}),
                "{plugin} VERSION with stdin {stdin:?}"
            );
        }
        let probe = twill_tests::exec::version(bin(plugin)).assert_success();
        assert_eq!(
            probe["supportedVersions"],
            json!(versions),
            "{plugin} libcni-style probe"
        );
    }
}

/// Malformed or hostile stdin for every verb: whatever happens, no panic, and a failure is always a
/// proper CNI error object (docs/cni-spec-notes.md §6).
#[test]
fn no_input_makes_a_plugin_panic() {
    require_root();
    let long_name = "n".repeat(10_000);
    let corpus: Vec<String> = vec![
        String::new(),
        "null".into(),
        "[]".into(),
        "42".into(),
        "\"string\"".into(),
        r#"{"cniVersion": 5, "name": "x", "type": "t"}"#.into(),
        r#"{"cniVersion": "", "name": "x", "type": "t"}"#.into(),
        r#"{"cniVersion": "1.0", "name": "x", "type": "t"}"#.into(),
        r#"{"cniVersion": "1.0.0", "name": "bad name/..", "type": "t"}"#.into(),
        format!(r#"{{"cniVersion": "1.0.0", "name": "{long_name}", "type": "t"}}"#),
        r#"{"cniVersion": "1.0.0", "name": "x", "type": "t", "prevResult": 7}"#.into(),
        r#"{"cniVersion": "1.0.0", "name": "x", "type": "t", "prevResult": {"ips": [{"address": "nope"}]}}"#.into(),
        r#"{"cniVersion": "0.4.0", "name": "x", "type": "t", "prevResult": {"cniVersion": "0.2.0", "ip4": {"ip": "1.2.3.4"}}}"#.into(),
        r#"{"cniVersion": "1.1.0", "name": "x", "type": "t", "cni.dev/valid-attachments": "all"}"#.into(),
        r#"{"cniVersion": "1.0.0", "name": "x", "type": "t", "runtimeConfig": [], "args": 1, "capabilities": "x"}"#.into(),
        "{\"cniVersion\": \"1.0.0\", \"name\": \"\u{1F600}\"}".into(),
        "\u{0}\u{1}\u{2}binary".into(),
    ];
    for plugin in PLUGINS.iter().map(|p| p.name) {
        let node = Netns::new("node");
        for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
            for stdin in &corpus {
                let pod = Netns::new("pod");
                let outcome = Invocation::new(bin(plugin), verb)
                    .libcni_style()
                    .netns(Some(pod.path()))
                    .in_netns(node.path())
                    .stdin_bytes(stdin.as_bytes())
                    .run();
                let shown: String = stdin.chars().take(120).collect();
                outcome.assert_no_panic();
                if !outcome.success() {
                    let err = outcome.json.clone().unwrap_or(Value::Null);
                    assert!(
                        err.get("code").and_then(Value::as_u64).is_some()
                            && err.get("msg").and_then(Value::as_str).is_some_and(|m| !m.is_empty()),
                        "{plugin} {verb} with stdin {shown:?} failed without a CNI error object: {}",
                        outcome.describe()
                    );
                }
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failing case is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A string of 0..=max chars: mostly from `common`, sometimes from `rare`, so that both
    /// accepted and refused names come up often.
    fn string(&mut self, common: &[char], rare: &[char], max: usize) -> String {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len)
            .map(|_| {
                let pool = if self.next() % 10 < 8 { common } else { rare };
                pool[(self.next() % pool.len() as u64) as usize]
            })
            .collect()
    }
}

/// Container ids and interface names drawn around the edges of docs/cni-spec-notes.md §7 (charset, leading
/// character, 15-byte limit, multi-byte characters, separators, whitespace) are accepted or refused
/// with the same code by our loopback and each reference build's (1.1.1 and v1.10.0).
#[test]
fn names_are_validated_like_the_reference() {
    for r in twill_tests::bins::Reference::ALL {
        names_are_validated_like(r);
    }
}

fn names_are_validated_like(r: twill_tests::bins::Reference) {
    require_root();
    let ours = bin("loopback");
    let reference = r.bin("loopback");
    let common = ['a', 'Z', '0', '9', '_', '.', '-'];
    let rare = ['/', ':', ' ', '\t', 'é', '@', '+', '=', ',', '\u{a0}'];
    let mut rng = Rng(0x7715_2026_c0ff_ee01);
    let mut differences = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..150 {
        // Half the cases vary the container id, half the interface name; the other stays valid.
        let (id, ifname) = if case % 2 == 0 {
            (rng.string(&common, &rare, 12), "eth0".to_string())
        } else {
            ("twill-names".to_string(), rng.string(&common, &rare, 18))
        };
        let conf = json!({"cniVersion": "1.0.0", "name": "twill-names", "type": "loopback"});
        let verdict = |plugin: &Path| {
            let pod = Netns::new("pod");
            let outcome = Invocation::new(plugin, "ADD")
                .libcni_style()
                .container_id(Some(&id))
                .ifname(Some(&ifname))
                .netns(Some(pod.path()))
                .stdin_json(&conf)
                .run();
            outcome.assert_no_panic();
            if outcome.success() {
                None
            } else {
                Some(
                    outcome.assert_any_error()["code"]
                        .as_u64()
                        .unwrap_or_default(),
                )
            }
        };
        let (got, want) = (verdict(&ours), verdict(&reference));
        match want {
            None => accepted += 1,
            Some(_) => refused += 1,
        }
        if got != want {
            differences.push(format!(
                "id {id:?} ifname {ifname:?}: ours {got:?}, {r} {want:?} (error code, None = accepted)"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} names judged differently from {r}:\n  {}",
        differences.len(),
        differences.join("\n  ")
    );
    eprintln!("names: {accepted} accepted, {refused} refused by {r}; ours agreed on all");
    assert!(
        accepted >= 20 && refused >= 20,
        "the generator must exercise both sides: {accepted} accepted, {refused} refused"
    );
}

/// The about line names the build like the reference's (`CNI bridge plugin v1.4.0`), plus the commit:
/// `v<version>, commit <id>` (`unknown` outside `scripts/release.sh`). VERSION keeps to the spec's two keys.
#[test]
fn about_line_names_the_version_and_commit_and_version_keeps_to_the_spec() {
    for plugin in [
        "bridge",
        "loopback",
        "portmap",
        "flannel",
        "host-local",
        "bandwidth",
        "firewall",
        "ptp",
        "tuning",
        "static",
        "sbr",
        "macvlan",
        "host-device",
        "tap",
    ] {
        let about = Invocation::new(bin(plugin), "ADD").command(None).run();
        assert!(about.success(), "{plugin}: {}", about.describe());
        let first = about.stderr.lines().next().unwrap_or_default().to_string();
        let expected = format!("(twill) v{}, commit ", env!("CARGO_PKG_VERSION"));
        assert!(
            first.starts_with("CNI ") && first.contains(&expected),
            "{plugin}: {first:?}"
        );
        let version = Invocation::new(bin(plugin), "VERSION").run();
        assert!(version.success(), "{plugin}: {}", version.describe());
        let answer: Value = serde_json::from_str(&version.stdout).expect("VERSION answers JSON");
        let mut keys: Vec<&String> = answer.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["cniVersion", "supportedVersions"],
            "{plugin}: {answer}"
        );
    }
}
