//! Our host-local and each reference build (Debian's 1.1.1 in `/usr/lib/cni`, upstream v1.10.0 from
//! `tests/upstream/plugins`) on one data directory: neither hands out an address the other holds, either
//! releases what the other allocated, both continue one round-robin cursor, and our state outside the
//! network directory never disturbs the reference.

mod host_local_common;

use host_local_common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use twill_tests::bins::Reference;

fn addr(r: &serde_json::Value, i: usize) -> String {
    addresses(r)[i].clone()
}

#[test]
fn reference_leases_are_seen_reused_and_released_by_ours() {
    for r in Reference::ALL {
        reference_leases_are_seen_reused_and_released_by_ours_with(r);
    }
}

fn reference_leases_are_seen_reused_and_released_by_ours_with(r: Reference) {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.70.0.0/24"}], [{"subnet": "fd70::/64"}]]}));
    let r1 = run_reference(r, "ADD", "r1", "eth0", &net.conf).assert_success();
    let r2 = run_reference(r, "ADD", "r2", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&r1), ["10.70.0.2/24", "fd70::2/64"]);
    // Ours continues the reference's cursor and never hands out its addresses.
    let o1 = run_ours("ADD", "o1", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&o1), ["10.70.0.4/24", "fd70::4/64"]);
    // An attachment the reference allocated gets its address back from ours (idempotent ADD).
    let again = run_ours("ADD", "r1", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&again), addresses(&r1));
    // CHECK with the reference's result as prevResult.
    let mut check = net.conf.clone();
    check["prevResult"] = r2.clone();
    run_ours("CHECK", "r2", "eth0", &check).assert_success();
    // Ours releases what the reference allocated.
    run_ours("DEL", "r1", "eth0", &net.conf).assert_success();
    let left: BTreeSet<String> = net.leases().into_values().collect();
    assert_eq!(
        left,
        BTreeSet::from(["r2\r\neth0".to_string(), "o1\r\neth0".to_string()])
    );
    run_ours("DEL", "r2", "eth0", &net.conf).assert_success();
    run_ours("DEL", "o1", "eth0", &net.conf).assert_success();
    assert_eq!(
        net.names(),
        ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    );
}

#[test]
fn our_leases_are_seen_and_released_by_the_reference() {
    for r in Reference::ALL {
        our_leases_are_seen_and_released_by_the_reference_with(r);
    }
}

fn our_leases_are_seen_and_released_by_the_reference_with(r: Reference) {
    let net = TestNet::new(json!({"subnet": "10.71.0.0/24"}));
    let o1 = run_ours("ADD", "o1", "eth0", &net.conf).assert_success();
    run_ours("ADD", "o2", "eth0", &net.conf).assert_success();
    let r1 = run_reference(r, "ADD", "r1", "eth0", &net.conf).assert_success();
    assert_eq!(
        addr(&r1, 0),
        "10.71.0.4/24",
        "the reference continues our cursor"
    );
    // The reference sees our lease as o1's: its own duplicate check fires, its CHECK passes.
    let dup = run_reference(r, "ADD", "o1", "eth0", &net.conf).assert_any_error();
    assert!(
        dup["msg"]
            .as_str()
            .unwrap()
            .contains("duplicate allocation"),
        "{dup}"
    );
    let mut check = net.conf_v("1.0.0");
    check["prevResult"] = o1.clone();
    run_reference(r, "CHECK", "o1", "eth0", &check).assert_success();
    // The reference releases what we allocated; ours notices and neither returns the stale address nor
    // loses track of the others.
    run_reference(r, "DEL", "o1", "eth0", &net.conf).assert_success();
    assert!(!net.leases().contains_key("10.71.0.2"));
    let o1_again = run_ours("ADD", "o1", "eth0", &net.conf).assert_success();
    assert_eq!(addr(&o1_again, 0), "10.71.0.5/24");
    run_ours("DEL", "r1", "eth0", &net.conf).assert_success();
    run_reference(r, "DEL", "o2", "eth0", &net.conf).assert_success();
    run_ours("DEL", "o1", "eth0", &net.conf).assert_success();
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert_eq!(net.names(), ["last_reserved_ip.0", "lock"]);
    // Our index lives outside the network directory, so the reference's recursive walk never sees it.
    assert!(net.dir.path().join("data/.twill").join(net.name()).is_dir());
}

#[test]
fn reference_writes_between_our_operations_are_never_missed() {
    for r in Reference::ALL {
        reference_writes_between_our_operations_are_never_missed_with(r);
    }
}

fn reference_writes_between_our_operations_are_never_missed_with(r: Reference) {
    // Alternate writers many times: every foreign change must invalidate our index.
    let net = TestNet::new(json!({"subnet": "10.72.0.0/24"}));
    for i in 0..10 {
        let (a, b) = (format!("ref{i}"), format!("our{i}"));
        run_reference(r, "ADD", &a, "eth0", &net.conf).assert_success();
        run_ours("ADD", &b, "eth0", &net.conf).assert_success();
        let mine = run_ours("ADD", &a, "eth0", &net.conf).assert_success();
        assert_eq!(
            net.leases()
                .get(&addr(&mine, 0).replace("/24", ""))
                .map(String::as_str),
            Some(format!("{a}\r\neth0").as_str())
        );
    }
    for i in 0..10 {
        run_ours("DEL", &format!("ref{i}"), "eth0", &net.conf).assert_success();
        run_reference(r, "DEL", &format!("our{i}"), "eth0", &net.conf).assert_success();
    }
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

#[test]
fn ours_and_the_reference_allocating_at_once_never_share_an_address() {
    for r in Reference::ALL {
        ours_and_the_reference_allocating_at_once_never_share_an_address_with(r);
    }
}

fn ours_and_the_reference_allocating_at_once_never_share_an_address_with(r: Reference) {
    let net = TestNet::new(json!({"subnet": "10.73.0.0/26"}));
    let conf = Arc::new(net.conf.clone());
    let barrier = Arc::new(Barrier::new(64));
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let (conf, barrier) = (conf.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let id = format!("pod{i}");
                if i % 2 == 0 {
                    run_ours("ADD", &id, "eth0", &conf)
                } else {
                    run_reference(r, "ADD", &id, "eth0", &conf)
                }
            })
        })
        .collect();
    let mut got = BTreeSet::new();
    for h in handles {
        let o = h.join().unwrap();
        if o.success() {
            let a = addr(&o.assert_success(), 0);
            assert!(got.insert(a.clone()), "{a} handed out twice");
        } else {
            let e = o.assert_any_error();
            assert!(
                e["msg"]
                    .as_str()
                    .unwrap()
                    .contains("no IP addresses available"),
                "{e}"
            );
        }
    }
    assert_eq!(got.len(), 61);
    assert_eq!(net.leases().len(), 61);
    // Cross-release: ours deletes the reference's pods and the reference deletes ours.
    for i in 0..64 {
        let id = format!("pod{i}");
        if i % 2 == 0 {
            run_reference(r, "DEL", &id, "eth0", &net.conf).assert_success();
        } else {
            run_ours("DEL", &id, "eth0", &net.conf).assert_success();
        }
    }
    assert_eq!(net.names(), ["last_reserved_ip.0", "lock"]);
}

#[test]
fn results_equal_the_reference_for_the_same_state() {
    for r in Reference::ALL {
        results_equal_the_reference_for_the_same_state_with(r);
    }
}

fn results_equal_the_reference_for_the_same_state_with(r: Reference) {
    let versions: &[&str] = match r {
        Reference::Debian => &["0.2.0", "0.3.1", "0.4.0", "1.0.0"],
        Reference::Current => &["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    };
    for &version in versions {
        let ipam = json!({
            "ranges": [[{"subnet": "10.74.0.0/24", "gateway": "10.74.0.254"}], [{"subnet": "fd74::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "fd00::/8", "gw": "fd74::1"}],
        });
        let (a, b) = (TestNet::new(ipam.clone()), TestNet::new(ipam));
        let mut conf_a = a.conf_v(version);
        let mut conf_b = b.conf_v(version);
        // One address family per result in 0.2.0.
        if version == "0.2.0" {
            conf_a["ipam"]["ranges"] = json!([[{"subnet": "10.74.0.0/24"}]]);
            conf_b["ipam"]["ranges"] = json!([[{"subnet": "10.74.0.0/24"}]]);
        }
        let ours = run(&ours(), "ADD", "c1", "eth0", &conf_a, None).assert_success();
        let theirs = run_reference(r, "ADD", "c1", "eth0", &conf_b).assert_success();
        assert_eq!(
            without_empty_dns(&ours),
            without_empty_dns(&theirs),
            "cniVersion {version}, {r}"
        );
        assert_eq!(
            a.leases(),
            b.leases(),
            "cniVersion {version}: same bytes on disk"
        );
    }
}
