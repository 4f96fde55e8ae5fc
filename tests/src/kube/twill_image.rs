//! The twill image `conf/kubernetes/kube-twill.yml` runs (`localhost/twill:<version>`), for clusters in
//! tests.
//!
//! Two sources: `TWILL_IMAGE_ARCHIVE`, an archive `scripts/image.sh` made (the release image, static
//! binaries of a committed HEAD; what CI's image step builds), or by default an image of the binaries
//! under test (`cargo build --workspace --bins`), with the same layout as the release image
//! (`/opt/bin/twilld`, `/opt/bin/twill-install`, `/opt/twill/cni/<plugin>`). Those binaries are dynamic,
//! so the image also carries the C library files they load; they are stripped of debug information to
//! keep the import into every node quick. scripts/image-test.sh tests the release image itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::{bin, workspace_dir};
use crate::runtimes::image::rootfs_image_tar;

/// The plugins the DaemonSet installs into `/opt/cni/bin`.
pub const PLUGINS: &[&str] = &["flannel", "bridge", "host-local", "portmap", "loopback"];

/// The workspace's version (`[workspace.package]` of Cargo.toml), the tag of the manifest's image.
pub fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(workspace_dir().join("Cargo.toml")).expect("Cargo.toml");
    cargo
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package] in Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("workspace version")
}

/// The image name the manifest uses.
pub fn image_name() -> String {
    format!("localhost/twill:{}", workspace_version())
}

/// The image archive to import: `TWILL_IMAGE_ARCHIVE` when set, else one built into `dir` from the
/// binaries under test.
pub fn archive(dir: &Path) -> PathBuf {
    if let Some(a) = std::env::var_os("TWILL_IMAGE_ARCHIVE").filter(|a| !a.is_empty()) {
        let a = PathBuf::from(a);
        assert!(
            a.is_file(),
            "TWILL_IMAGE_ARCHIVE={} is no file",
            a.display()
        );
        return a;
    }
    build_from_workspace(dir)
}

fn install(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// The shared objects `binary` loads (ldd), with the dynamic loader.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("ldd {}: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// An image of the binaries under test in `dir`; returns its archive.
pub fn build_from_workspace(dir: &Path) -> PathBuf {
    let rootfs = dir.join("twill-rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let mut binaries = Vec::new();
    for b in ["twilld", "twill-install"] {
        binaries.push((bin(b), rootfs.join("opt/bin").join(b)));
    }
    for p in PLUGINS {
        binaries.push((bin(p), rootfs.join("opt/twill/cni").join(p)));
    }
    let mut libs = Vec::new();
    for (from, to) in &binaries {
        install(from, to);
        libs.extend(libraries(from));
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        let real = std::fs::canonicalize(&lib)
            .unwrap_or_else(|e| panic!("resolve {}: {e}", lib.display()));
        let to = rootfs.join(lib.strip_prefix("/").expect("absolute"));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        std::fs::copy(&real, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", real.display(), to.display()));
    }
    rootfs_image_tar(&rootfs, dir, "twill", &image_name(), &["/opt/bin/twilld"])
}
