//! twilld's footprint on the node and its identity among nodes: it leaves directories it did not create as
//! they are, and nodes that share a name (cloned machines, namespaces of one host) still get distinct VTEP
//! MACs, with a duplicate MAC detected, reported and resolved by itself.

mod overlay_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use overlay_support::*;
use twill_tests::cluster::wait_until;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn subnet_file_in_an_existing_sticky_world_writable_dir_leaves_its_mode_alone() {
    let mut c = Cluster::new(0, 1.0);
    let shared = tempfile::Builder::new()
        .prefix("twilld-1777-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    let file = shared.path().join("subnet.env");
    let node = c.switch.add_node(1);
    let mut args = c.args();
    args.extra.push(format!("--subnet-file={}", file.display()));
    c.nodes.push(node);
    c.daemons.push(c.nodes[0].start_twilld(&args));
    let read_subnet = || {
        std::fs::read_to_string(&file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET=").map(str::to_string))
        })
    };
    assert!(
        wait_until(READY, || read_subnet().is_some()),
        "{} not written\n{}",
        file.display(),
        c.daemons[0].log_text()
    );
    assert_eq!(
        mode(shared.path()),
        0o1777,
        "twilld changed the mode of a directory it did not create"
    );
    let first = read_subnet().unwrap_or_default();

    // A lease change rewrites the file: the old subnet is now reserved for another node, so the restart
    // takes another one.
    assert_eq!(c.daemons[0].terminate(), Some(0));
    let (key, _) = c
        .etcd
        .get_prefix(SUBNETS)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no lease in etcd"));
    c.etcd.del(&key);
    c.etcd
        .put(&key, &flannel_lease("10.250.0.99", "02:00:00:00:00:99"));
    c.daemons[0] = c.nodes[0].start_twilld(&args);
    assert!(
        wait_until(READY, || read_subnet().is_some_and(|s| s != first)),
        "subnet.env not rewritten with a new subnet\n{}",
        c.daemons[0].log_text()
    );
    assert_eq!(
        mode(shared.path()),
        0o1777,
        "the rewrite changed the directory's mode"
    );
    assert_eq!(mode(&file), 0o644);
    drop(c);
    assert_eq!(mode(shared.path()), 0o1777);
}
