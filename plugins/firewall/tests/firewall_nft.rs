//! The nf_tables core against the real kernel: every rule the builders emit must render in
//! `nft list ruleset` as the intended nft statement, and list back with handle and comment.

mod common;

use std::net::IpAddr;

use common::TestNetns;
use twill_firewall::nft::{
    priority, BaseChain, Batch, CmpOp, Family, Hook, L4Proto, Nft, Rule, Verdict,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every builder in one table, committed as one transaction, with the exact `nft` rendering.
#[test]
fn builders_render_as_intended_nft_rules() {
    let ns = TestNetns::new("render");
    let cases: Vec<(Rule, &str)> = vec![
        (
            Rule::new(Family::Inet)
                .match_saddr(CmpOp::Eq, ip("10.1.2.3"))
                .unwrap()
                .match_daddr(CmpOp::Neq, "10.1.2.0/24".parse::<ipnet::IpNet>().unwrap())
                .unwrap()
                .masquerade()
                .comment("masq-v4"),
            "ip saddr 10.1.2.3 ip daddr != 10.1.2.0/24 masquerade comment \"masq-v4\"",
        ),
        (
            Rule::new(Family::Inet)
                .match_saddr(CmpOp::Eq, ip("fd00::5"))
                .unwrap()
                .match_daddr(CmpOp::Neq, "fd00::/64".parse::<ipnet::IpNet>().unwrap())
                .unwrap()
                .masquerade_fully_random(),
            "ip6 saddr fd00::5 ip6 daddr != fd00::/64 masquerade fully-random",
        ),
        (
            Rule::new(Family::Inet)
                .match_daddr(CmpOp::Eq, "224.0.0.0/4".parse::<ipnet::IpNet>().unwrap())
                .unwrap()
                .return_(),
            "ip daddr 224.0.0.0/4 return",
        ),
        (
            Rule::new(Family::Inet)
                .match_daddr(CmpOp::Eq, "ff00::/8".parse::<ipnet::IpNet>().unwrap())
                .unwrap()
                .return_(),
            "ip6 daddr ff00::/8 return",
        ),
        (
            Rule::new(Family::Inet)
                .match_fib_daddr_local()
                .match_dport(L4Proto::Tcp, CmpOp::Eq, 8080)
                .counter()
                .jump("target"),
            "fib daddr type local tcp dport 8080 counter packets 0 bytes 0 jump target",
        ),
        (
            Rule::new(Family::Inet)
                .match_nfproto(twill_firewall::nft::IpFamily::V4)
                .match_dport(L4Proto::Udp, CmpOp::Eq, 53)
                .dnat(ip("10.1.2.3"), Some(5353))
                .unwrap(),
            "meta nfproto ipv4 udp dport 53 dnat ip to 10.1.2.3:5353",
        ),
        (
            Rule::new(Family::Inet)
                .match_nfproto(twill_firewall::nft::IpFamily::V6)
                .match_dport(L4Proto::Tcp, CmpOp::Eq, 80)
                .dnat(ip("fd00::7"), Some(8080))
                .unwrap(),
            "meta nfproto ipv6 tcp dport 80 dnat ip6 to [fd00::7]:8080",
        ),
        (
            Rule::new(Family::Inet)
                .match_mark(CmpOp::Eq, 0x2000, 0x2000)
                .masquerade(),
            "meta mark & 0x00002000 == 0x00002000 masquerade",
        ),
        (
            Rule::new(Family::Inet).set_mark_or(0x2000),
            "meta mark set meta mark | 0x00002000",
        ),
        (
            Rule::new(Family::Inet)
                .match_iifname(CmpOp::Eq, "cni0")
                .unwrap()
                .match_oifname(CmpOp::Neq, "eth0")
                .unwrap()
                .accept(),
            "iifname \"cni0\" oifname != \"eth0\" accept",
        ),
        (
            Rule::new(Family::Inet)
                .match_saddr(CmpOp::Eq, ip("10.1.2.3"))
                .unwrap()
                .snat(ip("192.0.2.1"), None)
                .unwrap(),
            "ip saddr 10.1.2.3 snat ip to 192.0.2.1",
        ),
        (
            Rule::new(Family::Inet)
                .match_l4proto(17)
                .match_th_dport(CmpOp::Neq, 4789)
                .match_sport(L4Proto::Udp, CmpOp::Eq, 53)
                .drop_packet(),
            "udp dport != 4789 udp sport 53 drop",
        ),
        (
            Rule::new(Family::Inet)
                .set_mark(0x4000)
                .verdict(Verdict::Continue),
            "meta mark set 0x00004000 continue",
        ),
        (Rule::new(Family::Inet).goto("target"), "goto target"),
    ];

    ns.run(|| {
        let mut batch = Batch::new();
        batch
            .add_table(Family::Inet, "twtest")
            .add_base_chain(
                Family::Inet,
                "twtest",
                "post",
                &BaseChain::nat(Hook::Postrouting, priority::SRCNAT),
            )
            .add_chain(Family::Inet, "twtest", "target");
        batch.add_base_chain(
            Family::Inet,
            "twtest",
            "pre",
            &BaseChain::nat(Hook::Prerouting, priority::DSTNAT),
        );
        for (rule, expected) in &cases {
            // DNAT and `fib daddr` belong before routing (the kernel refuses them later).
            let chain = if expected.contains("dnat") || expected.contains("fib") {
                "pre"
            } else {
                "post"
            };
            batch.add_rule("twtest", chain, rule).unwrap();
        }
        Nft::open().unwrap().commit(&batch).unwrap();
    });

    let listing = ns.nft_list();
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    for (_, expected) in &cases {
        assert!(
            lines.contains(expected),
            "rule `{expected}` not rendered; nft list ruleset:\n{listing}"
        );
    }
    assert!(
        listing.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{listing}"
    );
}

/// The rules the listing test reads back from chain `c` of table `t`: an accept with a comment, a return, and
/// a goto to `c2` inserted before them.
fn add_listed_rules(batch: &mut Batch) {
    batch
        .add_rule(
            "t",
            "c",
            &Rule::new(Family::Ip)
                .match_saddr(CmpOp::Eq, ip("10.9.9.9"))
                .unwrap()
                .accept()
                .comment("first"),
        )
        .unwrap()
        .add_rule("t", "c", &Rule::new(Family::Ip).return_())
        .unwrap()
        .insert_rule(
            "t",
            "c",
            &Rule::new(Family::Ip).goto("c2").comment("zeroth"),
        )
        .unwrap();
}

#[test]
fn list_rules_returns_handles_comments_and_expressions() {
    let ns = TestNetns::new("list");
    ns.run(|| {
        let nft = Nft::open().unwrap();
        let mut batch = Batch::new();
        batch
            .add_table(Family::Ip, "t")
            .add_chain(Family::Ip, "t", "c");
        add_listed_rules(&mut batch);
        batch.add_chain(Family::Ip, "t", "c2");
        // c2 is created after the rule that references it, in the same transaction: the kernel
        // resolves chain names at commit, so order inside a batch matters. Expect a clean error.
        let err = nft.commit(&batch).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("insert rule to ip t c"), "{err}");
        assert!(
            nft.list_tables(Family::Ip).unwrap().is_empty(),
            "failed batch left state"
        );

        let mut batch = Batch::new();
        batch
            .add_table(Family::Ip, "t")
            .add_chain(Family::Ip, "t", "c")
            .add_chain(Family::Ip, "t", "c2");
        add_listed_rules(&mut batch);
        nft.commit(&batch).unwrap();

        let rules = nft.list_rules(Family::Ip, "t", "c").unwrap();
        let comments: Vec<_> = rules.iter().map(|r| r.comment.as_deref()).collect();
        assert_eq!(comments, vec![Some("zeroth"), Some("first"), None]);
        assert_eq!(
            rules[0].exprs.last().unwrap().verdict_of(),
            Some(Verdict::Goto("c2".into()))
        );
        let cmp_data: Vec<_> = rules[1].exprs.iter().filter_map(|e| e.cmp_data()).collect();
        assert_eq!(cmp_data, vec![vec![10, 9, 9, 9]]);
        assert!(rules
            .iter()
            .all(|r| r.handle > 0 && r.table == "t" && r.chain == "c"));

        // Same handles and comments as `nft -j` sees them.
        let json = ns.nft_json();
        let json_rules: Vec<&serde_json::Value> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["chain"] == "c")
            .collect();
        let from_nft: Vec<(u64, Option<String>)> = json_rules
            .iter()
            .map(|r| {
                (
                    r["handle"].as_u64().unwrap(),
                    r["comment"].as_str().map(str::to_string),
                )
            })
            .collect();
        let ours: Vec<(u64, Option<String>)> = rules
            .iter()
            .map(|r| (r.handle, r.comment.clone()))
            .collect();
        assert_eq!(ours, from_nft);
        let first = json_rules.iter().find(|r| r["comment"] == "first").unwrap();
        assert_eq!(
            first["expr"][0]["match"]["left"]["payload"]["field"], "saddr",
            "{first}"
        );
        assert_eq!(first["expr"][0]["match"]["right"], "10.9.9.9", "{first}");
        assert!(first["expr"][1].get("accept").is_some(), "{first}");

        // Delete by handle, flush, delete chains and table.
        let mut batch = Batch::new();
        batch.delete_rule(Family::Ip, "t", "c", rules[1].handle);
        nft.commit(&batch).unwrap();
        let left: Vec<_> = nft
            .list_rules(Family::Ip, "t", "c")
            .unwrap()
            .into_iter()
            .map(|r| r.handle)
            .collect();
        assert_eq!(left, vec![rules[0].handle, rules[2].handle]);

        let err = nft.commit(&batch).unwrap_err();
        assert!(err.is_not_found(), "deleting a gone rule: {err}");

        let chains = nft.list_chains(Family::Ip, Some("t")).unwrap();
        let mut names: Vec<_> = chains.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["c", "c2"]);

        let mut batch = Batch::new();
        batch
            .flush_chain(Family::Ip, "t", "c")
            .delete_chain(Family::Ip, "t", "c")
            .delete_chain(Family::Ip, "t", "c2")
            .delete_table(Family::Ip, "t");
        nft.commit(&batch).unwrap();
        assert!(nft.list_tables(Family::Ip).unwrap().is_empty());
        assert!(nft.list_rules(Family::Ip, "t", "c").unwrap().is_empty());
    });
    assert_eq!(ns.nft_list().trim(), "");
}

#[test]
fn base_chain_is_listed_with_hook_priority_and_type() {
    let ns = TestNetns::new("chains");
    ns.run(|| {
        let nft = Nft::open().unwrap();
        let mut batch = Batch::new();
        batch
            .add_table(Family::Ip6, "t6")
            .add_base_chain(
                Family::Ip6,
                "t6",
                "pre",
                &BaseChain::nat(Hook::Prerouting, priority::DSTNAT),
            )
            .add_base_chain(
                Family::Ip6,
                "t6",
                "fwd",
                &BaseChain::filter(Hook::Forward, priority::FILTER),
            );
        nft.commit(&batch).unwrap();
        // Idempotent: adding the same table and chains again succeeds.
        nft.commit(&batch).unwrap();
        let chains = nft.list_chains(Family::Ip6, None).unwrap();
        let pre = chains.iter().find(|c| c.name == "pre").unwrap();
        assert_eq!(pre.hook, Some(Hook::Prerouting));
        assert_eq!(pre.priority, Some(-100));
        assert_eq!(pre.chain_type.as_deref(), Some("nat"));
        let fwd = chains.iter().find(|c| c.name == "fwd").unwrap();
        assert_eq!(fwd.hook, Some(Hook::Forward));
        assert_eq!(fwd.chain_type.as_deref(), Some("filter"));
    });
    let json = ns.nft_json();
    let chains: Vec<_> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain"))
        .collect();
    assert_eq!(chains.len(), 2, "{json}");
    let pre = chains.iter().find(|c| c["name"] == "pre").unwrap();
    assert_eq!(pre["family"], "ip6");
    assert_eq!(pre["hook"], "prerouting");
    assert_eq!(pre["prio"], -100);
    assert_eq!(pre["type"], "nat");
}

#[test]
fn errors_name_the_failing_change() {
    let ns = TestNetns::new("errors");
    ns.run(|| {
        let nft = Nft::open().unwrap();
        let mut batch = Batch::new();
        batch
            .add_table(Family::Inet, "t")
            .add_rule("t", "missing", &Rule::new(Family::Inet).accept())
            .unwrap();
        let err = nft.commit(&batch).unwrap_err();
        assert!(err.is_not_found());
        let text = err.to_string();
        assert!(text.contains("add rule to inet t missing"), "{text}");
        // Nothing of the failed transaction stays.
        assert!(nft.list_tables(Family::Inet).unwrap().is_empty());
        // An empty batch is a no-op.
        nft.commit(&Batch::new()).unwrap();
    });
}

#[test]
fn large_batch_commits_atomically_and_lists_completely() {
    let ns = TestNetns::new("large");
    let n = 4000u32;
    ns.run(|| {
        let nft = Nft::open().unwrap();
        let mut batch = Batch::new();
        batch
            .add_table(Family::Inet, "big")
            .add_chain(Family::Inet, "big", "c");
        for i in 0..n {
            let addr = IpAddr::from([10, 200, (i / 250) as u8, (i % 250) as u8 + 1]);
            batch
                .add_rule(
                    "big",
                    "c",
                    &Rule::new(Family::Inet)
                        .match_saddr(CmpOp::Eq, addr)
                        .unwrap()
                        .match_dport(L4Proto::Tcp, CmpOp::Eq, 8000 + (i % 1000) as u16)
                        .accept()
                        .comment(format!("owner-{i}")),
                )
                .unwrap();
        }
        nft.commit(&batch).unwrap();
        let rules = nft.list_rules(Family::Inet, "big", "c").unwrap();
        assert_eq!(rules.len(), n as usize);
        assert_eq!(rules[1234].comment.as_deref(), Some("owner-1234"));
        // Delete them all in one transaction too.
        let mut batch = Batch::new();
        for r in &rules {
            batch.delete_rule(Family::Inet, "big", "c", r.handle);
        }
        nft.commit(&batch).unwrap();
        assert!(nft.list_rules(Family::Inet, "big", "c").unwrap().is_empty());
    });
}

/// The `ip`/`ip6` tables flanneld-style traffic rules use and the `bridge` table of macspoofchk
/// render as `nft` writes them (so a table built by either side reads the same in `nft list`).
#[test]
fn ip_ip6_and_bridge_family_rules_render_as_intended() {
    let ns = TestNetns::new("families");
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let v4: Vec<(Rule, &str)> = vec![
        (
            Rule::new(Family::Ip)
                .match_mark(CmpOp::Eq, 0x4000, 0x4000)
                .return_()
                .comment("flanneld masq"),
            "meta mark & 0x00004000 == 0x00004000 return comment \"flanneld masq\"",
        ),
        (
            Rule::new(Family::Ip)
                .match_saddr(CmpOp::Neq, net("10.244.0.0/16"))
                .unwrap()
                .match_daddr(CmpOp::Eq, net("10.244.3.0/24"))
                .unwrap()
                .return_(),
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        ),
        (
            Rule::new(Family::Ip)
                .match_saddr(CmpOp::Eq, net("10.244.0.0/16"))
                .unwrap()
                .match_daddr(CmpOp::Neq, net("224.0.0.0/4"))
                .unwrap()
                .masquerade_fully_random(),
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        ),
    ];
    let v6: Vec<(Rule, &str)> = vec![(
        Rule::new(Family::Ip6)
            .match_saddr(CmpOp::Eq, net("fd42::/56"))
            .unwrap()
            .match_daddr(CmpOp::Neq, net("ff00::/8"))
            .unwrap()
            .masquerade(),
        "ip6 saddr fd42::/56 ip6 daddr != ff00::/8 masquerade",
    )];
    let br: Vec<(Rule, &str)> = vec![
        (
            Rule::new(Family::Bridge)
                .match_ether_saddr(CmpOp::Eq, [0x0a, 0x58, 0x0a, 0, 0, 0x05])
                .unwrap()
                .return_()
                .comment("spoof"),
            "ether saddr 0a:58:0a:00:00:05 return comment \"spoof\"",
        ),
        (
            Rule::new(Family::Bridge)
                .match_iifname(CmpOp::Eq, "veth1")
                .unwrap()
                .jump("per-port"),
            "iifname \"veth1\" jump per-port",
        ),
        (Rule::new(Family::Bridge).drop_packet(), "drop"),
    ];
    assert!(Rule::new(Family::Ip)
        .match_ether_saddr(CmpOp::Eq, [0; 6])
        .is_err());
    assert!(Rule::new(Family::Bridge)
        .match_saddr(CmpOp::Eq, ip("10.0.0.1"))
        .is_err());

    ns.run(|| {
        let mut batch = Batch::new();
        for (family, hook, rules) in [
            (Family::Ip, Hook::Postrouting, &v4),
            (Family::Ip6, Hook::Postrouting, &v6),
            (Family::Bridge, Hook::Prerouting, &br),
        ] {
            let base = if family == Family::Bridge {
                BaseChain::filter(hook, -300)
            } else {
                BaseChain::nat(hook, priority::SRCNAT)
            };
            batch
                .add_table(family, "twtest")
                .add_base_chain(family, "twtest", "c", &base)
                .add_chain(family, "twtest", "per-port");
            for (rule, _) in rules.iter() {
                batch.add_rule("twtest", "c", rule).unwrap();
            }
        }
        let nft = Nft::open().unwrap();
        nft.commit(&batch).unwrap();
        let listed = nft.list_rules(Family::Bridge, "twtest", "c").unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].comment.as_deref(), Some("spoof"));
    });

    let listing = ns.nft_list();
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    for (_, expected) in v4.iter().chain(&v6).chain(&br) {
        assert!(
            lines.contains(expected),
            "rule `{expected}` not rendered; nft list ruleset:\n{listing}"
        );
    }
    assert!(listing.contains("table bridge twtest"), "{listing}");
}
