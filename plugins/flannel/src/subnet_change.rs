//! Detecting that the node's subnet changed under an existing bridge (a common flannel complaint: the bridge keeps the
//! old gateway and every new pod fails with a bare "already has an IP address different from").
//!
//! When the daemon comes back with a different subnet, `subnet.env` names the new one but the bridge still
//! carries the old gateway. The bridge delegate then refuses every ADD with a bare
//! `"cni0" already has an IP address different from 10.244.7.1/24`, which users cannot act on. We look at the
//! bridge before delegating and say what happened and what to do instead.

use crate::subnet_env::SubnetEnv;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::Path;
use twill_cni::{Error, Result};

/// The reference bridge's default bridge name.
const DEFAULT_BRIDGE: &str = "cni0";

/// What the delegate bridge will put on the bridge: its name and the gateway of each node subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedGateways {
    pub bridge: String,
    /// First address of each node subnet with the subnet's prefix (host-local's default gateway).
    pub gateways: Vec<IpNet>,
}

impl ExpectedGateways {
    /// `None` when the delegate will not put a gateway on a bridge we can predict: another plugin type,
    /// `isGateway: false`, or `forceAddress: true` (then the bridge replaces the old address itself).
    pub fn of(delegate: &Map<String, Value>, env: &SubnetEnv) -> Option<ExpectedGateways> {
        let flag = |k: &str| delegate.get(k).and_then(Value::as_bool).unwrap_or(false);
        if delegate.get("type").and_then(Value::as_str) != Some("bridge")
            || !flag("isGateway")
            || flag("forceAddress")
        {
            return None;
        }
        let bridge = delegate
            .get("bridge")
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
            .unwrap_or(DEFAULT_BRIDGE)
            .to_string();
        let gateways = env
            .node_networks()
            .into_iter()
            .filter_map(|net| {
                let first = match net.network() {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a).checked_add(1)?).into()),
                    IpAddr::V6(a) => IpAddr::V6((u128::from(a).checked_add(1)?).into()),
                };
                IpNet::new(first, net.prefix_len()).ok()
            })
            .collect();
        Some(ExpectedGateways { bridge, gateways })
    }

    /// Compares with the addresses the bridge has, using the bridge plugin's own rule: for IPv4 any other
    /// address is a conflict; for IPv6 only an address overlapping the gateway's subnet is (several IPv6
    /// subnets may share a bridge). Returns the conflicting (old, expected) pair.
    pub fn conflict(&self, present: &[IpNet]) -> Option<(IpNet, IpNet)> {
        for gw in &self.gateways {
            if present.contains(gw) {
                continue;
            }
            let clash = present.iter().find(|a| match (a, gw) {
                (IpNet::V4(_), IpNet::V4(_)) => true,
                (IpNet::V6(a6), IpNet::V6(g6)) => {
                    !is_link_local(a) && (a6.contains(&g6.addr()) || g6.contains(&a6.addr()))
                }
                _ => false,
            });
            if let Some(old) = clash {
                return Some((*old, *gw));
            }
        }
        None
    }
}

fn is_link_local(a: &IpNet) -> bool {
    matches!(a.addr(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Looks at the bridge in this (the host's) namespace. A missing bridge is fine: the delegate creates it.
pub fn check(expected: &ExpectedGateways, subnet_file: &Path) -> Result<()> {
    let present = match bridge_addresses(&expected.bridge) {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(()),
        // The check only improves a message; if the kernel cannot be asked, the delegate still refuses.
        Err(e) => {
            eprintln!(
                "flannel: cannot read the addresses of bridge {}: {e}",
                expected.bridge
            );
            return Ok(());
        }
    };
    match expected.conflict(&present) {
        None => Ok(()),
        Some((old, new)) => Err(changed_error(
            &expected.bridge,
            &old.to_string(),
            new,
            subnet_file,
        )),
    }
}

fn bridge_addresses(bridge: &str) -> twill_kernel::Result<Option<Vec<IpNet>>> {
    let host = twill_kernel::Handle::current()?;
    let link = match host.link_by_name(bridge) {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        host.addresses(Some(link.index), None)?
            .into_iter()
            .map(|a| a.net)
            .collect(),
    ))
}

/// The error ADD returns: what happened (the node's subnet changed), and what to do.
pub fn changed_error(bridge: &str, old: &str, new_gateway: IpNet, subnet_file: &Path) -> Error {
    Error::failed(format!(
        "the node's subnet changed: bridge {bridge} still has gateway {old} from the old subnet, but {} \
         now gives this node {} (gateway {new_gateway}). Pods on the old subnet keep working but new pods \
         cannot join the bridge. To move the node to the new subnet, delete (drain) the pods still using \
         the old one, then delete the bridge (`ip link delete {bridge}`); the next pod ADD recreates it with \
         the new gateway. Alternatively give the overlay daemon its old subnet back.",
        subnet_file.display(),
        new_gateway.trunc(),
    ))
}

/// The delegate's own wording of the same conflict (reference bridge `ensureAddr`), used when the check
/// above could not see it (another ADD added the old address in between, or a different bridge plugin).
pub fn is_delegate_conflict(e: &Error) -> bool {
    e.msg.contains("already has an IP address different from")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env::parse;
    use serde_json::json;

    fn env(extra: &str) -> SubnetEnv {
        parse(&format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n{extra}"
        ))
        .unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn expected_gateway_is_the_first_address_of_the_node_subnet() {
        let d = json!({"type":"bridge","isGateway":true});
        let e = ExpectedGateways::of(d.as_object().unwrap(), &env("")).unwrap();
        assert_eq!(e.bridge, "cni0");
        assert_eq!(e.gateways, nets(&["10.244.1.1/24"]));
        let d = json!({"type":"bridge","isGateway":true,"bridge":"br9"});
        let e = ExpectedGateways::of(
            d.as_object().unwrap(),
            &env("FLANNEL_IPV6_SUBNET=fd00:1::5/64\n"),
        )
        .unwrap();
        assert_eq!(e.bridge, "br9");
        assert_eq!(e.gateways, nets(&["10.244.1.1/24", "fd00:1::1/64"]));
    }

    #[test]
    fn no_prediction_for_other_delegates() {
        for d in [
            json!({"type":"ptp","isGateway":true}),
            json!({"type":"bridge","isGateway":false}),
            json!({"type":"bridge","isGateway":true,"forceAddress":true}),
        ] {
            assert!(
                ExpectedGateways::of(d.as_object().unwrap(), &env("")).is_none(),
                "{d}"
            );
        }
    }

    #[test]
    fn conflicts_follow_the_bridge_plugins_rule() {
        let d = json!({"type":"bridge","isGateway":true});
        let e = ExpectedGateways::of(
            d.as_object().unwrap(),
            &env("FLANNEL_IPV6_SUBNET=fd00:1::1/64\n"),
        )
        .unwrap();
        assert_eq!(e.conflict(&[]), None);
        assert_eq!(e.conflict(&nets(&["10.244.1.1/24", "fe80::1/64"])), None);
        assert_eq!(
            e.conflict(&nets(&["10.244.7.1/24"])),
            Some((
                "10.244.7.1/24".parse().unwrap(),
                "10.244.1.1/24".parse().unwrap()
            ))
        );
        // Another IPv6 subnet may coexist; an overlapping one may not.
        assert_eq!(e.conflict(&nets(&["10.244.1.1/24", "fd00:9::1/64"])), None);
        assert!(e
            .conflict(&nets(&["10.244.1.1/24", "fd00:1::9/64"]))
            .is_some());
    }

    #[test]
    fn message_says_what_happened_and_what_to_do() {
        let e = changed_error(
            "cni0",
            "10.244.7.1/24",
            "10.244.1.1/24".parse().unwrap(),
            Path::new("/run/flannel/subnet.env"),
        );
        for part in [
            "subnet changed",
            "10.244.7.1/24",
            "10.244.1.0/24",
            "ip link delete cni0",
        ] {
            assert!(e.msg.contains(part), "{part}: {}", e.msg);
        }
    }
}
