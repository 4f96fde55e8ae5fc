//! A root filesystem of static busybox, and an OCI image tarball of it that stands in for the pause image:
//! the runtime tests need no registry.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applets linked into the rootfs: enough for addresses, ping, TCP/UDP servers and clients.
const APPLETS: &[&str] = &[
    "sh", "ip", "ping", "nc", "sleep", "wget", "cat", "true", "echo", "hostname", "httpd",
    "ifconfig", "ls", "grep", "route", "top",
];

pub const BUSYBOX: &str = "/bin/busybox";
/// The image name containerd's CRI uses for sandboxes by default (runtimes.md): importing it under this name
/// means CRI never pulls.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";

/// Creates `<dir>/rootfs` holding busybox and its applet links; returns its path.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d))
            .unwrap_or_else(|e| panic!("create rootfs dir {d}: {e}"));
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("copy {BUSYBOX} (install busybox-static): {e}"));
    for a in APPLETS {
        let link = root.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .unwrap_or_else(|e| panic!("link {a}: {e}"));
        }
    }
    std::fs::write(root.join("www/index.html"), "twill\n")
        .unwrap_or_else(|e| panic!("write index: {e}"));
    root
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn put_blob(blobs: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256_hex(bytes);
    std::fs::write(blobs.join(&digest), bytes).unwrap_or_else(|e| panic!("write blob: {e}"));
    (format!("sha256:{digest}"), bytes.len())
}

/// Builds an OCI-layout tarball with one uncompressed layer (the busybox rootfs) whose entrypoint sleeps
/// forever, named [`PAUSE_IMAGE`]; returns the tarball's path (`<dir>/pause.tar`).
pub fn pause_image_tar(dir: &Path) -> PathBuf {
    image_tar(dir, "pause", PAUSE_IMAGE, &["/bin/sleep", "infinity"])
}

/// Builds an OCI-layout tarball of the busybox rootfs named `name` with `entrypoint`, in
/// `<dir>/<key>.tar` (`key` keeps the layouts of several images in one directory apart).
pub fn image_tar(dir: &Path, key: &str, name: &str, entrypoint: &[&str]) -> PathBuf {
    let rootfs = busybox_rootfs(dir);
    oci_archive(
        &rootfs,
        dir,
        key,
        &[ImageConfig {
            name,
            entrypoint,
            cmd: &[],
        }],
    )
}

/// Builds an OCI-layout tarball of the directory `rootfs` (one layer) named `name` with `entrypoint`, in
/// `<dir>/image-<key>/<key>.tar`.
pub fn rootfs_image_tar(
    rootfs: &Path,
    dir: &Path,
    key: &str,
    name: &str,
    entrypoint: &[&str],
) -> PathBuf {
    oci_archive(
        rootfs,
        dir,
        key,
        &[ImageConfig {
            name,
            entrypoint,
            cmd: &[],
        }],
    )
}

/// One image of an archive: its full reference and what it runs (OCI `Entrypoint` and `Cmd`).
#[derive(Debug, Clone, Copy)]
pub struct ImageConfig<'a> {
    pub name: &'a str,
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
}

/// The `PATH` every image sets, so a pod's shell finds binaries in `/usr/bin` as well as `/bin`
/// whatever default the runtime has.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds `<dir>/image-<key>/<key>.tar`, an OCI-layout tarball holding one image per entry of `images`,
/// all of them sharing one uncompressed layer made of `rootfs`: importing it stores the layer once.
pub fn oci_archive(rootfs: &Path, dir: &Path, key: &str, images: &[ImageConfig]) -> PathBuf {
    let dir = &dir.join(format!("image-{key}"));
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("create {}: {e}", blobs.display()));
    let layer_path = dir.join("layer.tar");
    // Sorted, owned by root and dated 0, so the same rootfs always gives the same layer digest.
    let ok = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-cf",
        ])
        .arg(&layer_path)
        .arg(".")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "tar the rootfs {}", rootfs.display());
    let layer = std::fs::read(&layer_path).unwrap_or_else(|e| panic!("read layer: {e}"));
    let (layer_digest, layer_size) = put_blob(&blobs, &layer);
    drop(layer);
    let _ = std::fs::remove_file(&layer_path);
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let mut manifests = Vec::new();
    for image in images {
        let mut config = serde_json::json!({"Env": [PATH_ENV], "Entrypoint": image.entrypoint});
        if !image.cmd.is_empty() {
            config["Cmd"] = serde_json::json!(image.cmd);
        }
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = put_blob(&blobs, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = put_blob(&blobs, manifest.to_string().as_bytes());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "org.opencontainers.image.ref.name": image.name,
                "io.containerd.image.name": image.name,
            },
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string())
        .unwrap_or_else(|e| panic!("write index: {e}"));
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap_or_else(|e| panic!("write oci-layout: {e}"));
    let tarball = dir.join(format!("{key}.tar"));
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "tar the OCI layout");
    // The blobs are in the tarball now; the layer is the bulk of them.
    let _ = std::fs::remove_dir_all(&layout);
    tarball
}

/// Copies the dynamically linked program `program` into `root` at the same path, with every shared
/// library `ldd` lists for it (and the dynamic loader) at their paths, so it runs in a container
/// whose rootfs has no libc of its own.
pub fn add_dynamic_program(root: &Path, program: &Path) {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .unwrap_or_else(|e| panic!("run ldd {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "ldd {}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = vec![program.to_path_buf()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in files {
        let rel = file.strip_prefix("/").unwrap_or(&file);
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        // fs::copy follows symlinks: the library's real contents land under the name it is loaded by.
        std::fs::copy(&file, &dest)
            .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", file.display()));
    }
}
