//! A Kubernetes node's mount namespace (`twill_tests::kube::mount_ns::MountNs`) keeps paths to itself that the
//! machine may not have: they exist inside the node only, so nothing is left on the machine afterwards, and
//! two nodes alive at once (in one test process or two) never see each other's files.

use std::path::{Path, PathBuf};

use twill_tests::kube::mount_ns::MountNs;

/// A path under /run of this test only (the machine's /run exists; this does not).
fn scratch(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/twill-mountns-{}-{name}", std::process::id()))
}

/// Removes a path the test created on the machine, even when it fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(ns: &MountNs, script: &str) -> String {
    let out = ns
        .enter()
        .args(["sh", "-c", script])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mounted_anywhere(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    text.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|m| m.starts_with(&p))
    })
}

#[test]
fn paths_missing_on_the_machine_exist_only_inside_each_node_and_are_gone_afterwards() {
    let missing = scratch("node");
    let _gone = Cleanup(missing.clone());
    // A file the machine has in the covered directory: the node sees it and writes go to the machine's file.
    let shared = scratch("shared");
    let _shared = Cleanup(shared.clone());
    std::fs::write(&shared, "machine\n").unwrap();
    assert!(
        !missing.exists(),
        "{} exists before the test",
        missing.display()
    );

    let deep = format!("{}/a/b", missing.display());
    let flat = format!("{}/c", missing.display());
    // A fresh machine has no /etc/cni either: /etc is covered then, its files still the machine's.
    let etc = PathBuf::from(format!("/etc/twill-mountns-{}", std::process::id()));
    let _etc_gone = Cleanup(etc.clone());
    let in_etc = format!("{}/net.d", etc.display());
    let paths = [deep.as_str(), flat.as_str(), in_etc.as_str()];
    let before: Vec<String> = std::fs::read_dir("/run")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = MountNs::create_over(d1.path(), &paths);
    let two = MountNs::create_over(d2.path(), &paths);
    assert!(
        !missing.exists(),
        "{} was created on the machine",
        missing.display()
    );
    assert!(
        !mounted_anywhere(&missing),
        "a node's mount reached the machine"
    );

    sh(&one, &format!("echo one > {deep}/f && echo one > {flat}/f"));
    sh(&two, &format!("echo two > {deep}/f && echo two > {flat}/f"));
    assert_eq!(sh(&one, &format!("cat {deep}/f {flat}/f")), "one\none");
    assert_eq!(sh(&two, &format!("cat {deep}/f {flat}/f")), "two\ntwo");

    let shared_s = shared.display();
    assert_eq!(sh(&one, &format!("cat {shared_s}")), "machine");
    sh(&one, &format!("echo node >> {shared_s}"));
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "machine\nnode\n");
    // The rest of /run is the machine's too (but for what the other test here adds and removes meanwhile).
    let seen: Vec<String> = sh(&one, "ls -A /run").lines().map(String::from).collect();
    for e in before.iter().filter(|e| !e.starts_with("twill-mountns-")) {
        assert!(seen.contains(e), "the node does not see /run/{e}: {seen:?}");
    }

    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert_eq!(sh(&one, "cat /etc/hostname"), hostname.trim());
    sh(&one, &format!("touch {in_etc}/10-twill.conflist"));
    assert!(
        !etc.exists(),
        "{} was created on the machine",
        etc.display()
    );

    // One node going away leaves the other as it was.
    drop(one);
    assert_eq!(sh(&two, &format!("cat {deep}/f {flat}/f")), "two\ntwo");
    drop(two);
    assert!(!etc.exists(), "{} is left on the machine", etc.display());
    assert!(
        !missing.exists(),
        "{} is left on the machine",
        missing.display()
    );
}

#[test]
fn paths_the_machine_has_are_covered_by_the_nodes_own_directory_and_left_as_they_were() {
    let existing = scratch("existing");
    let _gone = Cleanup(existing.clone());
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("mine"), "machine\n").unwrap();
    let path = existing.display().to_string();
    let d = tempfile::tempdir().unwrap();
    let ns = MountNs::create_over(d.path(), &[path.as_str()]);
    assert_eq!(
        sh(&ns, &format!("ls -A {path}")),
        "",
        "the node sees the machine's files"
    );
    sh(&ns, &format!("echo node > {path}/f"));
    assert!(
        !existing.join("f").exists(),
        "the node wrote into the machine's directory"
    );
    drop(ns);
    assert_eq!(
        std::fs::read_dir(&existing)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>(),
        vec!["mine".to_string()]
    );
}
