//! Real container runtimes driving CNI plugins: podman with its CNI backend and containerd's CRI
//! plugin, configured to exec a chosen plugin directory. Facts and workarounds: shared/docs/runtimes.md.
//!
//! Both runtimes exec plugins in the network namespace they themselves run in; a fixture can be started
//! inside a test "node" namespace so that everything the plugins create stays there. `nsenter --net` is
//! used rather than `ip netns exec`, which also remounts /sys and so hides the cgroup mounts runc needs.

pub mod containerd;
pub mod cri;
pub mod image;
pub mod podman;

use std::path::Path;
use std::process::Command;

/// Runs `cmd`, optionally inside the named network namespace, and returns (success, stdout, stderr).
pub(crate) fn run_in(netns: Option<&str>, cmd: &[&str]) -> (bool, String, String) {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"));
            c.args(cmd);
            c
        }
        None => {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    let out = c.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A network list of our `bridge` (gateway, masquerade, host-local in `data_dir`) and `portmap`: what the
/// runtime tests and benchmarks give podman and containerd.
pub fn bridge_portmap_conflist(
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// A shell command line that fetches `/index.html` from `ip:port` with busybox `nc` and prints the response.
/// (busybox-static's `wget` crashes in its static resolver on some machines; `nc` with an address does not.)
pub fn http_get_cmd(ip: &str, port: u16) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")
}

/// Unmounts every mount point below `dir` (deepest first): runtimes leave shm, rootfs and netns mounts
/// behind when they are killed, and a temp dir with live mounts cannot be removed.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", &p]).status();
    }
}

/// `unmount_below` inside the mount namespace `mount_ns` (a namespace file).
pub(crate) fn unmount_below_in(mount_ns: &Path, dir: &Path) {
    let script = format!(
        "awk -v p='{}' 'index($2, p) == 1 {{ print length($2), $2 }}' /proc/self/mounts | sort -rn | \
         while read -r _ m; do umount -l \"$m\"; done",
        dir.display()
    );
    let _ = Command::new("nsenter")
        .arg(format!("--mount={}", mount_ns.display()))
        .args(["sh", "-c", &script])
        .output();
}
