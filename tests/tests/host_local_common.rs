//! Shared helpers of the host-local tests (`mod host_local_common;` in each): a per-test network on its own
//! temporary dataDir, runtime-like execution of ours and the reference, and views of the on-disk state.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use twill_tests::bins::{bin, ref_bin, Reference};
use twill_tests::exec::{Invocation, Outcome};

pub fn ours() -> PathBuf {
    bin("host-local")
}

pub fn reference() -> PathBuf {
    ref_bin("host-local")
}

/// A network with a unique name whose dataDir is a fresh temporary directory (removed on drop).
pub struct TestNet {
    pub dir: tempfile::TempDir,
    pub conf: Value,
}

impl TestNet {
    /// `ipam` keys (without `type` and `dataDir`, which are filled in); cniVersion 1.1.0.
    pub fn new(ipam: Value) -> TestNet {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("twill-hl-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create temporary dataDir: {e}"));
        let name = format!(
            "hl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut ipam = ipam;
        ipam["type"] = json!("host-local");
        ipam["dataDir"] = json!(dir.path().join("data").display().to_string());
        let conf = json!({"cniVersion": "1.1.0", "name": name, "type": "host-local", "ipam": ipam});
        TestNet { dir, conf }
    }

    pub fn name(&self) -> &str {
        self.conf["name"].as_str().unwrap_or_default()
    }

    /// `<dataDir>/<network>`.
    pub fn net_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(self.name())
    }

    /// Every lease in the network directory: address -> content. Only names that are addresses count.
    pub fn leases(&self) -> BTreeMap<String, String> {
        leases_in(&self.net_dir())
    }

    /// Every name in the network directory, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.net_dir()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// The network's conf with a different cniVersion.
    pub fn conf_v(&self, version: &str) -> Value {
        let mut c = self.conf.clone();
        c["cniVersion"] = json!(version);
        c
    }
}

pub fn leases_in(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                let content = fs::read(e.path()).unwrap_or_default();
                out.insert(name, String::from_utf8_lossy(&content).into_owned());
            }
        }
    }
    out
}

/// Runs `plugin` for an attachment like a runtime (ADD/CHECK need a netns path; host-local never enters it).
pub fn run(
    plugin: &Path,
    command: &str,
    id: &str,
    ifname: &str,
    conf: &Value,
    args: Option<&str>,
) -> Outcome {
    Invocation::new(plugin, command)
        .container_id(Some(id))
        .ifname(Some(ifname))
        .netns_str(Some("/proc/self/ns/net"))
        .cni_args(args)
        .stdin_json(conf)
        .run()
}

pub fn run_ours(command: &str, id: &str, ifname: &str, conf: &Value) -> Outcome {
    run(&ours(), command, id, ifname, conf, None)
}

pub fn run_ours_with_args(
    command: &str,
    id: &str,
    ifname: &str,
    conf: &Value,
    args: &str,
) -> Outcome {
    run(&ours(), command, id, ifname, conf, Some(args))
}

pub fn run_ref(command: &str, id: &str, ifname: &str, conf: &Value) -> Outcome {
    // The reference speaks up to 1.0.0.
    let mut conf = conf.clone();
    conf["cniVersion"] = json!("1.0.0");
    run(&reference(), command, id, ifname, &conf, None)
}

/// One of the reference builds, as a runtime would run it: Debian's 1.1.1 speaks up to 1.0.0, so a
/// 1.1.0 config is given to it as 1.0.0; the current release gets it as it is.
pub fn run_reference(r: Reference, command: &str, id: &str, ifname: &str, conf: &Value) -> Outcome {
    let mut conf = conf.clone();
    if r == Reference::Debian && conf["cniVersion"] == "1.1.0" {
        conf["cniVersion"] = json!("1.0.0");
    }
    Invocation::new(r.bin("host-local"), command)
        .container_id(Some(id))
        .ifname(Some(ifname))
        .netns_str(Some(reference_netns(r)))
        .stdin_json(&conf)
        .run()
}

/// The `CNI_NETNS` a reference build is given. Upstream's skel (libcni >= 1.2) fails ADD and DEL with
/// code 8 when CNI_NETNS is the plugin's own namespace, after the plugin already ran (the lease of a
/// failed ADD stays); host-local never enters the namespace, so a path that is no namespace at all is
/// what the current release accepts.
pub fn reference_netns(r: Reference) -> &'static str {
    match r {
        Reference::Debian => "/proc/self/ns/net",
        Reference::Current => "/run/netns/twill-ipam-placeholder",
    }
}

/// A result with an empty `dns` object removed: the reference 1.1.1 and ours print `"dns": {}`,
/// libcni >= 1.2 results (reference v1.10) leave it out; both mean "no DNS settings".
pub fn without_empty_dns(v: &Value) -> Value {
    let mut v = v.clone();
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("dns");
        }
    }
    v
}

/// STATUS or GC: only `CNI_COMMAND` and `CNI_PATH` (spec 1.1).
pub fn run_plain(command: &str, conf: &Value) -> Outcome {
    Invocation::new(ours(), command)
        .container_id(None)
        .ifname(None)
        .stdin_json(conf)
        .run()
}

/// GC with `cni.dev/valid-attachments` = `valid` (absent when `None`).
pub fn gc(net: &TestNet, valid: Option<Value>) -> Outcome {
    let mut conf = net.conf.clone();
    if let Some(v) = valid {
        conf["cni.dev/valid-attachments"] = v;
    }
    run_plain("GC", &conf)
}

/// The `ips[].address` values of a result.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
