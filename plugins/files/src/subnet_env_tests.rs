use super::*;
use proptest::prelude::*;
use std::os::unix::fs::MetadataExt;

fn v4_only() -> SubnetEnv {
    SubnetEnv {
        networks_v4: vec!["10.244.0.0/16".parse().unwrap()],
        networks_v6: vec![],
        subnet_v4: Some(gateway_v4("10.244.1.0/24".parse().unwrap())),
        subnet_v6: None,
        mtu: 1450,
        ipmasq: true,
    }
}

#[test]
fn renders_flannels_ipv4_format() {
    assert_eq!(
        v4_only().render(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
}

#[test]
fn renders_dual_stack_in_flannels_line_order() {
    let env = SubnetEnv {
        networks_v6: vec!["2001:cafe:42::/56".parse().unwrap()],
        subnet_v6: Some(gateway_v6("2001:cafe:42::/64".parse().unwrap())),
        ipmasq: false,
        ..v4_only()
    };
    assert_eq!(
        env.render(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
         FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
         FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    );
}

#[test]
fn ipv6_only_renders_no_ipv4_lines_and_parses_back() {
    let env = SubnetEnv {
        networks_v4: vec![],
        subnet_v4: None,
        networks_v6: vec!["fd00::/48".parse().unwrap()],
        subnet_v6: Some(gateway_v6("fd00:0:0:5::/64".parse().unwrap())),
        ..v4_only()
    };
    assert!(!env.render().contains("FLANNEL_NETWORK="));
    assert_eq!(parse(&env.render()).unwrap(), env);
}

#[test]
fn missing_and_invalid_keys_are_named() {
    assert_eq!(
        parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n").unwrap_err(),
        SubnetEnvError::Missing(vec!["FLANNEL_MTU", "FLANNEL_IPMASQ"])
    );
    let e = parse(&v4_only().render().replace("1450", "0")).unwrap_err();
    assert!(e.to_string().contains("FLANNEL_MTU"), "{e}");
}

#[test]
fn writes_with_mode_0644_and_previous_subnets_reads_it_back() {
    let top = tempfile::tempdir().unwrap();
    let path = top.path().join("run/flannel/subnet.env");
    v4_only().write(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    assert_eq!(
        std::fs::metadata(top.path().join("run")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), v4_only().render());
    assert_eq!(
        previous_subnets(&path),
        (Some("10.244.1.0/24".parse().unwrap()), None)
    );
}

#[test]
fn previous_subnets_tolerates_an_incomplete_file_and_a_missing_one() {
    let top = tempfile::tempdir().unwrap();
    let path = top.path().join("subnet.env");
    assert_eq!(previous_subnets(&path), (None, None));
    std::fs::write(
        &path,
        "FLANNEL_IPV6_SUBNET=fd00:0:0:5::1/64\nFLANNEL_MTU=x\n",
    )
    .unwrap();
    assert_eq!(
        previous_subnets(&path),
        (None, Some("fd00:0:0:5::/64".parse().unwrap()))
    );
}

fn v4_net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Ipv4Net::new(a.into(), p).unwrap())
}

fn v6_net() -> impl Strategy<Value = Ipv6Net> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Ipv6Net::new(a.into(), p).unwrap())
}

/// Networks as the parser hands them back: network addresses, no duplicates, order kept.
fn normalised<T: PartialEq + Copy>(nets: Vec<T>, trunc: impl Fn(T) -> T) -> Vec<T> {
    let mut out = Vec::new();
    for n in nets.into_iter().map(trunc) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Any complete file: each family present or not (at least one), each with 1..4 networks and a subnet.
fn any_env() -> impl Strategy<Value = SubnetEnv> {
    (
        prop::option::of((prop::collection::vec(v4_net(), 1..4), v4_net())),
        prop::option::of((prop::collection::vec(v6_net(), 1..4), v6_net())),
        1u32..,
        any::<bool>(),
    )
        .prop_filter("one family at least", |(v4, v6, _, _)| {
            v4.is_some() || v6.is_some()
        })
        .prop_map(|(v4, v6, mtu, ipmasq)| {
            let (networks_v4, subnet_v4) = match v4 {
                Some((nets, s)) => (normalised(nets, |n: Ipv4Net| n.trunc()), Some(s)),
                None => (vec![], None),
            };
            let (networks_v6, subnet_v6) = match v6 {
                Some((nets, s)) => (normalised(nets, |n: Ipv6Net| n.trunc()), Some(s)),
                None => (vec![], None),
            };
            SubnetEnv {
                networks_v4,
                networks_v6,
                subnet_v4,
                subnet_v6,
                mtu,
                ipmasq,
            }
        })
}

proptest! {
    #[test]
    fn what_is_rendered_parses_back_equal(env in any_env()) {
        prop_assert_eq!(parse(&env.render()), Ok(env));
    }

    #[test]
    fn parse_never_panics_and_its_result_round_trips(
        lines in prop::collection::vec(
            (prop::sample::select(vec![
                "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ", "OTHER", "#",
            ]), "[0-9a-f:./, ]{0,24}"),
            0..10,
        )
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Ok(env) = parse(&text) {
            prop_assert_eq!(parse(&env.render()), Ok(env));
        }
    }
}
