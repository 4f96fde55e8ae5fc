//! The delegate config flannel renders from its own config and `subnet.env` (docs/architecture.md, flannel contracts,
//! the flannel CNI plugin), with the reference's defaults so a node switching from the reference plugin gets the same
//! bridge and pods.

use crate::config::FlannelConf;
use crate::subnet_env::SubnetEnv;
use serde_json::{json, Map, Value};

/// The delegate config for ADD (and STATUS/GC): the user's `delegate` object with flannel's defaults filled
/// in where the user set nothing, and the IPAM section rebuilt from the node's subnets.
pub fn delegate_config(conf: &FlannelConf, env: &SubnetEnv) -> Map<String, Value> {
    let mut d = conf.delegate.clone();
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.entry("type").or_insert_with(|| json!("bridge"));
    // The daemon's masquerade and the bridge's would NAT twice.
    d.entry("ipMasq").or_insert_with(|| json!(!env.ipmasq));
    // Pods must fit their packets into the overlay device's MTU.
    d.entry("mtu").or_insert_with(|| json!(env.mtu));
    if conf.delegate_type() == "bridge" {
        d.entry("isGateway").or_insert_with(|| json!(true));
    }
    if let Some(v) = &conf.cni_version {
        d.insert("cniVersion".into(), v.clone());
    }
    d.insert("ipam".into(), Value::Object(ipam(conf, env)));
    if let Some(rc) = conf.runtime_config.as_ref().filter(|rc| !rc.is_empty()) {
        d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    d
}

/// `ipam`: the user's object, `type` defaulting to host-local, `ranges` replaced by one range set per node
/// subnet family, `routes` extended with one route per cluster network (no `gw`: pods reach other nodes
/// through the bridge gateway).
fn ipam(conf: &FlannelConf, env: &SubnetEnv) -> Map<String, Value> {
    let mut ipam = conf.ipam.clone();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> = env
        .node_networks()
        .iter()
        .map(|n| json!([{ "subnet": n.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = match ipam.get("routes") {
        Some(Value::Array(r)) => r.clone(),
        _ => Vec::new(),
    };
    for net in env.cluster_networks() {
        // A user route to the same destination already covers it; a duplicate would make the delegate's
        // route add fail with "file exists".
        let dst = net.to_string();
        let already = routes.iter().any(|r| {
            r.get("dst")
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<ipnet::IpNet>().ok())
                .is_some_and(|d| d.trunc() == net)
        });
        if !already {
            routes.push(json!({ "dst": dst }));
        }
    }
    ipam.insert("routes".into(), Value::Array(routes));
    ipam
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env::parse;
    use twill_cni::NetConf;

    fn conf(v: Value) -> FlannelConf {
        FlannelConf::from_netconf(&NetConf::parse(v.to_string().as_bytes()).unwrap()).unwrap()
    }

    fn env() -> SubnetEnv {
        parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
            .unwrap()
    }

    /// The effective delegate for the stock Kubernetes conflist (docs/architecture.md, flannel contracts, the flannel
    /// CNI plugin).
    #[test]
    fn stock_conflist_renders_the_reference_delegate() {
        let c = conf(json!({"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
            "delegate":{"hairpinMode":true,"isDefaultGateway":true}}));
        assert_eq!(
            Value::Object(delegate_config(&c, &env())),
            json!({"cniVersion":"0.3.1","name":"cbr0","type":"bridge","hairpinMode":true,
                   "isDefaultGateway":true,"isGateway":true,"ipMasq":false,"mtu":1450,
                   "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],
                           "routes":[{"dst":"10.244.0.0/16"}]}})
        );
    }

    #[test]
    fn user_values_win_over_defaults() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","type":"flannel",
            "delegate":{"type":"ptp","ipMasq":true,"mtu":1400},
            "ipam":{"type":"other","dataDir":"/tmp/x","ranges":[[{"subnet":"1.2.3.0/24"}]],
                    "routes":[{"dst":"192.168.0.0/16","gw":"10.244.1.254"},{"dst":"10.244.0.0/16"}]},
            "runtimeConfig":{"portMappings":[]}}));
        let d = delegate_config(&c, &env());
        assert_eq!(d["type"], "ptp");
        assert_eq!(d["ipMasq"], true);
        assert_eq!(d["mtu"], 1400);
        assert!(
            !d.contains_key("isGateway"),
            "isGateway only defaults for bridge"
        );
        assert_eq!(d["ipam"]["type"], "other");
        assert_eq!(d["ipam"]["dataDir"], "/tmp/x");
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet":"10.244.1.0/24"}]]));
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst":"192.168.0.0/16","gw":"10.244.1.254"},{"dst":"10.244.0.0/16"}])
        );
        assert_eq!(d["runtimeConfig"], json!({"portMappings":[]}));
    }

    #[test]
    fn dual_stack_gets_two_range_sets_and_routes_for_every_network() {
        let env = parse(
            "FLANNEL_NETWORK=10.244.0.0/16,10.250.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let d = delegate_config(&conf(json!({"cniVersion":"1.0.0","name":"n"})), &env);
        assert_eq!(d["ipMasq"], true);
        assert_eq!(
            d["ipam"]["ranges"],
            json!([[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:42:0:1::/64"}]])
        );
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst":"10.244.0.0/16"},{"dst":"10.250.0.0/16"},{"dst":"fd00:42::/56"}])
        );
    }
}
