//! cri-tools' own conformance suite, `critest` (built from `tests/upstream/cri-tools`), runs its
//! networking tests against containerd's CRI with twill's bridge, host-local and portmap: pod IP, DNS
//! config, hostname, port mapping with only a container port (the pod IP is reached) and with a host port
//! (127.0.0.1:12000 on the node is reached). The same run with the reference plugins v1.10.0 is the
//! control. containerd runs inside a test node namespace; its images are busybox images built and
//! imported locally (no registry): a default test image running `top` and a web server on port 80.

use std::path::Path;
use std::process::Command;

use twill_tests::bins::{bin_dir, upstream_bin, Reference};
use twill_tests::netns::Netns;
use twill_tests::runtimes::bridge_portmap_conflist;
use twill_tests::runtimes::containerd::Containerd;

const TEST_IMAGE: &str = "twill.test/critest-busybox:1";
const WEB_IMAGE: &str = "twill.test/critest-web:1";
const FOCUS: &str = "runtime should support (DNS config|set hostname|port mapping)";

fn critest_networking(plugin_dir: &Path, what: &str) {
    let node = Netns::new("crit");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let net = format!("twcrit{}", std::process::id());
    let ctd = Containerd::start(
        plugin_dir,
        &bridge_portmap_conflist(&net, "twcrit0", "10.95.0.0/24", state.path()),
        Some(node.name()),
    );
    ctd.import_image("busybox", TEST_IMAGE, &["/bin/sh", "-c", "exec top"]);
    ctd.import_image(
        "web",
        WEB_IMAGE,
        &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let images = state.path().join("images.yaml");
    std::fs::write(
        &images,
        format!("defaultTestContainerImage: {TEST_IMAGE}\nwebServerTestImage: {WEB_IMAGE}\n"),
    )
    .expect("write test images file");
    let endpoint = format!("unix://{}", ctd.socket.display());
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .arg(upstream_bin("cri-tools", "critest"))
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .arg(format!("--test-images-file={}", images.display()))
        .arg(format!("--ginkgo.focus={FOCUS}"))
        .arg("--ginkgo.no-color")
        .current_dir(state.path())
        .output()
        .expect("run critest");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "critest networking failed with {what}:\n{text}\n--- containerd ---\n{}",
        ctd.log()
    );
    eprintln!("critest with {what}:\n{text}");
    // Four specs focused, all of them run and passed (none skipped for a missing feature).
    assert!(
        text.contains("Ran 4 of") && text.contains("4 Passed"),
        "critest with {what} did not run the 4 networking specs:\n{text}"
    );
    let leases = twill_tests::leases::held(&state.path().join(&net));
    assert!(
        leases.is_empty(),
        "{what}: leases left after critest: {leases:?}"
    );
}

#[test]
fn critest_networking_passes_with_twill_plugins() {
    critest_networking(&bin_dir(), "twill's plugins");
}

#[test]
fn critest_networking_passes_with_the_reference_plugins_as_control() {
    critest_networking(&Reference::Current.dir(), "the reference plugins v1.10.0");
}
