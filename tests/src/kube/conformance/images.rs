//! The images the focused network conformance tests run, built locally under the exact references the
//! pinned release's e2e framework asks for (its test/utils/image/manifest.go, listed by
//! `e2e.test --list-images`), so a kubelet with `imagePullPolicy: IfNotPresent` never pulls:
//!
//! - agnhost: the program of the same release (`tests/upstream/kubernetes-e2e`) on a busybox base, plus
//!   Debian's curl and OpenBSD netcat, which the tests exec in agnhost pods (`curl ... /dial`,
//!   `nc -u -w 1`): busybox's nc has no UDP mode and busybox has no curl. Upstream's image is Alpine with
//!   the same two tools. `/bin/sh` is Debian's dash: Debian's static busybox shell runs its own applets
//!   before anything on PATH, so `sh -c "... | nc -u ..."` would reach busybox's nc whatever PATH says.
//! - pause: the sandbox image the release's kubelet and kubeadm name; it runs `agnhost pause`, which
//!   exits on SIGTERM as the real pause does (a shell `sleep` as PID 1 ignores it and holds every pod
//!   deletion for its grace period).
//! - busybox: the e2e busybox image, for tests that run plain shell commands.
//!
//! All three share one layer, so a node stores it once.

use std::path::{Path, PathBuf};

use crate::runtimes::image::{self, ImageConfig};

/// `imageutils.GetE2EImage(imageutils.Agnhost)` of the pinned release.
pub const AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
/// `imageutils.GetE2EImage(imageutils.Pause)`, also kubeadm's `PauseVersion`: the sandbox image.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// `imageutils.GetE2EImage(imageutils.BusyBox)`.
pub const BUSYBOX_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2";

/// Every image this module builds.
pub const IMAGES: [&str; 3] = [AGNHOST_IMAGE, PAUSE_IMAGE, BUSYBOX_IMAGE];

/// Debian programs the e2e tests exec inside agnhost pods, with where they are installed from
/// (`curl` and `netcat-openbsd`, in `TWILL_DEBIAN_PACKAGES`).
const CURL: &str = "/usr/bin/curl";
const NC: &str = "/usr/bin/nc.openbsd";
/// The shell the tests' `/bin/sh -c` commands run in (package dash, always installed on Debian).
const SHELL: &str = "/bin/dash";

/// busybox applets the e2e specs run in their pods beyond the base rootfs's (Alpine's busybox has
/// them all): text tools, `nslookup` for the ExternalName specs, `timeout` and friends.
const MORE_APPLETS: &[&str] = &[
    "awk", "cut", "date", "dd", "env", "find", "head", "id", "mkdir", "nslookup", "ps", "rm",
    "sed", "seq", "sort", "tail", "test", "timeout", "touch", "tr", "uname", "wc", "xargs",
];

/// The agnhost program built from the pinned release.
pub fn agnhost_bin() -> PathBuf {
    crate::bins::upstream_bin("kubernetes-e2e", "agnhost")
}

/// Builds the root filesystem shared by the conformance images in `<dir>/e2e/rootfs`.
pub fn rootfs(dir: &Path) -> PathBuf {
    let root = image::busybox_rootfs(&dir.join("e2e"));
    for applet in MORE_APPLETS {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .unwrap_or_else(|e| panic!("link {applet}: {e}"));
        }
    }
    let agnhost = agnhost_bin();
    std::fs::copy(&agnhost, root.join("agnhost"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", agnhost.display()));
    // The image's second name for the same program, which entrypoint tests call.
    let second = root.join("agnhost-2");
    if !second.exists() {
        std::os::unix::fs::symlink("agnhost", &second)
            .unwrap_or_else(|e| panic!("link agnhost-2: {e}"));
    }
    // netexec stores uploads here (upstream's image creates it).
    std::fs::create_dir_all(root.join("uploads")).unwrap_or_else(|e| panic!("mkdir uploads: {e}"));
    for program in [CURL, NC, SHELL] {
        if !Path::new(program).is_file() {
            panic!(
                "{program} is missing: install Debian's curl and netcat-openbsd (scripts/test.sh does)"
            );
        }
        image::add_dynamic_program(&root, Path::new(program));
    }
    let sh = root.join("bin/sh");
    if std::fs::read_link(&sh).is_ok_and(|t| t == Path::new("busybox")) {
        std::fs::remove_file(&sh).unwrap_or_else(|e| panic!("unlink busybox sh: {e}"));
        std::os::unix::fs::symlink("dash", &sh).unwrap_or_else(|e| panic!("link sh: {e}"));
    }
    let nc = root.join("usr/bin/nc");
    // busybox's own nc applet sits in /bin, which comes last in PATH; /usr/bin/nc wins.
    if !nc.exists() {
        std::os::unix::fs::symlink("nc.openbsd", &nc).unwrap_or_else(|e| panic!("link nc: {e}"));
    }
    root
}

/// Builds one OCI archive holding [`AGNHOST_IMAGE`], [`PAUSE_IMAGE`] and [`BUSYBOX_IMAGE`] (one shared
/// layer) in `dir`; returns its path, ready for `ctr images import`.
pub fn archive(dir: &Path) -> PathBuf {
    let root = rootfs(dir);
    image::oci_archive(
        &root,
        dir,
        "e2e",
        &[
            // As upstream's Dockerfile: ENTRYPOINT ["/agnhost"], CMD ["pause"].
            ImageConfig {
                name: AGNHOST_IMAGE,
                entrypoint: &["/agnhost"],
                cmd: &["pause"],
            },
            ImageConfig {
                name: PAUSE_IMAGE,
                entrypoint: &["/agnhost", "pause"],
                cmd: &[],
            },
            ImageConfig {
                name: BUSYBOX_IMAGE,
                entrypoint: &[],
                cmd: &["sh"],
            },
        ],
    )
}
