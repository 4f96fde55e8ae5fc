mod common;

use common::TestNs;
use twill_kernel::{Family, Rule};

/// `ip rule` of both families, as text.
fn ip_rules(t: &TestNs) -> String {
    let mut out = t.ip(&["-4", "rule"]);
    out.push_str(&t.ip(&["-6", "rule"]));
    out
}

#[test]
fn rules_added_listed_and_deleted_as_ip_rule_shows_them() {
    let t = TestNs::new();
    let v4 = Rule {
        priority: Some(1000),
        ..Rule::from_source("10.3.0.5".parse().unwrap(), 100)
    };
    let v6 = Rule::from_source("2001:db8::5".parse().unwrap(), 70000);
    t.handle.add_rule(&v4).unwrap();
    t.handle.add_rule(&v6).unwrap();
    let shown = ip_rules(&t);
    assert!(shown.contains("1000:\tfrom 10.3.0.5 lookup 100"), "{shown}");
    assert!(shown.contains("from 2001:db8::5 lookup 70000"), "{shown}");

    // Only a rule with the same priority is the same rule (without one the kernel picks a new priority).
    let err = t.handle.add_rule(&v4).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string()
            .contains("pref 1000 from 10.3.0.5/32 lookup 100"),
        "{err}"
    );

    let listed = t.handle.rules(None).unwrap();
    let mine: Vec<&Rule> = listed.iter().filter(|r| r.src.is_some()).collect();
    assert_eq!(mine.len(), 2, "{listed:?}");
    assert!(mine.iter().all(|r| r.lookup && r.priority.is_some()));
    assert_eq!(mine[0].table, 100);
    assert_eq!(mine[0].src, Some("10.3.0.5/32".parse().unwrap()));
    assert_eq!(mine[1].family, Family::V6);
    assert_eq!(mine[1].table, 70000);
    // The kernel's default rules are listed too: local, main (and default for IPv4).
    assert!(listed.iter().any(|r| r.src.is_none() && r.table == 254));

    for r in &mine {
        t.handle.delete_rule(r).unwrap();
    }
    let err = t.handle.delete_rule(&v4).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let shown = ip_rules(&t);
    assert!(
        !shown.contains("10.3.0.5") && !shown.contains("2001:db8::5"),
        "{shown}"
    );
}
