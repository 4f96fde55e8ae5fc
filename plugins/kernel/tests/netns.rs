mod common;

use common::{thread_netns_inode, TestNs};
use twill_kernel::{Handle, NetNs};

#[test]
fn open_missing_path_is_not_found() {
    let err = NetNs::open("/run/netns/twk-does-not-exist").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("/run/netns/twk-does-not-exist"),
        "{err}"
    );
}

#[test]
fn open_path_that_is_not_a_netns_is_a_clear_error() {
    let err = NetNs::open("/proc/self/status").unwrap_err();
    assert!(!err.is_not_found(), "{err}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");
    let err = NetNs::open("/proc/self/ns/uts").unwrap_err();
    assert!(err.to_string().contains("not a network namespace"), "{err}");
}

#[test]
fn run_leaves_calling_thread_namespace_unchanged() {
    let t = TestNs::new();
    let before = thread_netns_inode();
    let inside = t.ns.run(thread_netns_inode).unwrap();
    assert_ne!(inside, before, "closure must run inside the namespace");
    assert_eq!(thread_netns_inode(), before);
    // Same namespace opened twice compares equal; the caller's does not.
    let again = NetNs::open(t.path()).unwrap();
    assert_eq!(again, t.ns);
    assert_ne!(NetNs::current().unwrap(), t.ns);
    assert!(NetNs::current().unwrap().is_current());
}

#[test]
fn handle_in_netns_sees_only_that_namespace() {
    let t = TestNs::new();
    let links = t.handle.links().unwrap();
    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"]);
    // The socket keeps working from another thread.
    let h = t.handle.clone();
    let from_thread = std::thread::spawn(move || h.link_by_name("lo").unwrap())
        .join()
        .unwrap();
    assert_eq!(from_thread.index, 1);
    // And the current-namespace handle is a different namespace.
    let host = Handle::current().unwrap();
    assert!(!host.links().unwrap().is_empty());
}

#[test]
fn unnamed_netns_is_usable_through_its_path() {
    let ns = NetNs::create_unnamed().unwrap();
    let reopened = NetNs::open(ns.path()).unwrap();
    assert_eq!(reopened, ns);
    let h = Handle::in_netns(&reopened).unwrap();
    assert_eq!(h.links().unwrap().len(), 1);
}
