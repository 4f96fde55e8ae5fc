//! A Kubernetes node's private mount namespace ([`MountNs`]): the paths a node keeps to itself (see
//! `node::NODE_PATHS`) are directories of the node's own there, and the kernel settings a kubelet checks
//! show the values it wants.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel settings a kubelet insists on (it rewrites them machine-wide unless told not to, then refuses
/// to start when they differ). These are not per network namespace: the node's mount namespace shows the
/// kubelet files holding the values it wants, so the machine's own settings stay untouched.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node's private mount namespace and the directories bind-mounted in it.
///
/// A path the node keeps to itself needs a mount point. When it does not exist on the machine (a fresh
/// machine has no /opt/cni/bin, /run/flannel, /var/log/pods), it is created inside the node's mount
/// namespace only: a tmpfs covers its deepest existing ancestor there, holding a bind mount of each entry
/// the machine has in that directory (so the node still sees and shares the machine's files), and the
/// missing directories are made in that tmpfs. The machine never sees them, so there is nothing to remove
/// afterwards, not even after a killed test. Creating them on the machine and removing them at the end
/// would need a cross-process lock and a shared record of who created what: a directory that is a mount
/// point in another live node's namespace must not be removed (that detaches the node's mount there), and
/// the test that created it may not be the last one to finish.
pub struct MountNs {
    /// The node's directory, bind-mounted onto itself as a private mount (a namespace file can only be
    /// bind-mounted where the mount does not propagate into that namespace).
    dir: PathBuf,
    file: PathBuf,
}

/// A shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// For each of `paths` missing on the machine, its deepest existing ancestor; shallowest first, each once.
fn covered_ancestors(paths: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let p = Path::new(p);
        if p.exists() {
            continue;
        }
        let parent = p
            .ancestors()
            .skip(1)
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        assert!(
            parent != Path::new("/"),
            "{}: its top-level directory does not exist on this machine; create it (a node covers a \
             directory below / only)",
            p.display()
        );
        if !out.iter().any(|o| o == parent) {
            out.push(parent.to_path_buf());
        }
    }
    out.sort_by_key(|p| p.components().count());
    out
}

/// Shell lines, run inside the node's mount namespace, that cover `parent` with a tmpfs holding a bind
/// mount (or a copy of the symlink) of each of its entries; `stage` is an empty directory to build it in.
fn cover_script(parent: &Path, stage: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(parent).unwrap_or_else(|e| panic!("stat {}: {e}", parent.display()));
    let stage_q = quote(&stage.display().to_string());
    let mut script = format!(
        "mount -t tmpfs -o mode={:o},uid={},gid={} twill-node {stage_q}\n",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    let entries =
        std::fs::read_dir(parent).unwrap_or_else(|e| panic!("read {}: {e}", parent.display()));
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let from = quote(&parent.join(&name).display().to_string());
        let to = quote(&stage.join(&name).display().to_string());
        match e.file_type() {
            Ok(t) if t.is_symlink() => {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                let target = quote(&target.display().to_string());
                script.push_str(&format!("ln -s {target} {to}\n"));
            }
            // An entry the machine removed meanwhile is left out.
            Ok(t) if t.is_dir() => script.push_str(&format!(
                "mkdir {to}\nmount --rbind {from} {to} || {{ [ ! -e {from} ] && rmdir {to}; }}\n"
            )),
            _ => script.push_str(&format!(
                ": > {to}\nmount --rbind {from} {to} || {{ [ ! -e {from} ] && rm {to}; }}\n"
            )),
        }
    }
    let parent_q = quote(&parent.display().to_string());
    script.push_str(&format!("mount --move {stage_q} {parent_q}\n"));
    script
}

impl MountNs {
    /// A private mount namespace, kept alive by a file in `dir`, in which each of `paths` is a directory of
    /// `dir`'s own (made inside the namespace when the machine has none, see [`MountNs`]).
    pub fn create_over(dir: &Path, paths: &[&str]) -> MountNs {
        for p in paths {
            std::fs::create_dir_all(Self::own(dir, p))
                .unwrap_or_else(|e| panic!("mkdir in {}: {e}", dir.display()));
        }
        let covers = covered_ancestors(paths);
        let file = dir.join("mnt.ns");
        std::fs::write(&file, "").unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
        run(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let ns = MountNs {
            dir: dir.to_path_buf(),
            file: file.clone(),
        };
        run(Command::new("mount").arg("--make-private").arg(dir));
        run(Command::new("unshare")
            .arg(format!("--mount={}", file.display()))
            .args(["--propagation", "private", "true"]));
        let mut script = String::from("set -e\n");
        for (i, parent) in covers.iter().enumerate() {
            let stage = dir.join(format!("cover-{i}"));
            std::fs::create_dir_all(&stage)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", stage.display()));
            script.push_str(&cover_script(parent, &stage));
        }
        for p in paths {
            script.push_str(&format!(
                "mkdir -p '{p}'\nmount --bind '{}' '{p}'\n",
                Self::own(dir, p).display()
            ));
        }
        for (name, value) in KUBELET_SYSCTLS {
            let f = dir.join(format!("sysctl-{}", name.replace('/', "-")));
            std::fs::write(&f, format!("{value}\n"))
                .unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
            script.push_str(&format!(
                "mount --bind -o ro '{}' /proc/sys/{name}\n",
                f.display()
            ));
        }
        run(ns.enter().args(["sh", "-c", &script]));
        ns
    }

    /// The node's own directory standing for `path`.
    pub(crate) fn own(dir: &Path, path: &str) -> PathBuf {
        dir.join("fs")
            .join(path.trim_start_matches('/').replace('/', "-"))
    }

    /// The namespace file (for `nsenter --mount=`).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// `nsenter` into this mount namespace (append the command).
    pub fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount={}", self.file.display()));
        c
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.file).output();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}
