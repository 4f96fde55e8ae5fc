//! A node's subnets come from `spec.podCIDRs` (one per family) or the older single `spec.podCIDR`, assigned by
//! kube-controller-manager. Until it has one the node waits, saying why and what to do about it: "pod cidr not
//! assigned" is the most common way a flannel-style network fails to come up.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::subnet::SubnetKey;

/// A node's pod subnets, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodCidrs {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

/// The families the network config runs (`EnableIPv4`, `EnableIPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Default for Families {
    fn default() -> Self {
        Families {
            v4: true,
            v6: false,
        }
    }
}

impl PodCidrs {
    /// The lease key of a node with these podCIDRs in the families the network runs; `None` when one of those
    /// families has no podCIDR (flanneld does not take such a node as a peer either).
    pub fn key(&self, families: Families) -> Option<SubnetKey> {
        let v4 = if families.v4 { Some(self.v4?) } else { None };
        let v6 = if families.v6 { Some(self.v6?) } else { None };
        Some(SubnetKey { v4, v6 })
    }
}

/// `spec.podCIDRs` wins over `spec.podCIDR` (which is its first entry on any current API server). At most one
/// subnet per family, as the API server enforces.
pub fn parse(pod_cidr: Option<&str>, pod_cidrs: &[String]) -> Result<PodCidrs, String> {
    let list: Vec<&str> = if pod_cidrs.is_empty() {
        pod_cidr.filter(|s| !s.is_empty()).into_iter().collect()
    } else {
        pod_cidrs.iter().map(String::as_str).collect()
    };
    if list.len() > 2 {
        return Err(format!(
            "{} podCIDRs ({}): at most one IPv4 and one IPv6 are possible",
            list.len(),
            list.join(", ")
        ));
    }
    let mut out = PodCidrs::default();
    for text in list {
        // As Go's ParseCIDR: host bits are masked.
        match text.parse::<IpNet>().map(|n| n.trunc()) {
            Ok(IpNet::V4(n)) if out.v4.is_none() => out.v4 = Some(n),
            Ok(IpNet::V6(n)) if out.v6.is_none() => out.v6 = Some(n),
            Ok(_) => {
                return Err(format!(
                    "two podCIDRs of one family ({})",
                    pod_cidrs.join(", ")
                ))
            }
            Err(_) => return Err(format!("podCIDR {text:?} is not a CIDR")),
        }
    }
    Ok(out)
}

/// Where this node stands on its own subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnSubnet {
    Ready(PodCidrs),
    /// Not yet: the reason, with what to do. Checked again later.
    Wait(String),
    /// Cannot work with this network config: the operator must change it.
    Fatal(String),
}

/// Judges the own node as read from the API server (`None`: no Node of that name) against the network config's
/// IPv4 `Network` and `IPv6Network` (`None`: that family is not enabled).
pub fn own_subnet(
    node: &str,
    spec: Option<(Option<&str>, &[String])>,
    v4_network: Option<Ipv4Net>,
    v6_network: Option<Ipv6Net>,
) -> OwnSubnet {
    let Some((pod_cidr, pod_cidrs)) = spec else {
        return OwnSubnet::Wait(format!(
            "node {node:?} is not registered with the API server yet: waiting for the kubelet to register it \
             (check that --node-name or NODE_NAME is the Node object's name: kubectl get nodes)"
        ));
    };
    let cidrs = match parse(pod_cidr, pod_cidrs) {
        Ok(c) => c,
        Err(e) => return OwnSubnet::Wait(format!("node {node:?}: {e}")),
    };
    // kube-controller-manager's --cluster-cidr for this network: one CIDR per family, comma-separated.
    let cluster: Vec<String> = v4_network
        .map(|n| n.to_string())
        .into_iter()
        .chain(v6_network.map(|n| n.to_string()))
        .collect();
    let cluster = cluster.join(",");
    if cidrs.v4.is_none() && cidrs.v6.is_none() {
        let example = v4_network
            .map(|n| n.to_string())
            .or(v6_network.map(|n| n.to_string()))
            .unwrap_or_default();
        return OwnSubnet::Wait(format!(
            "node {node:?} has no podCIDR assigned: waiting. Run kube-controller-manager with \
             --allocate-node-cidrs=true --cluster-cidr={cluster} (kubeadm: kubeadm init \
             --pod-network-cidr={cluster}), or set spec.podCIDR of the node (kubectl patch node {node} -p \
             '{{\"spec\":{{\"podCIDR\":\"<a subnet of {example}>\"}}}}')"
        ));
    }
    if let Some(network) = v4_network {
        match cidrs.v4 {
            None => {
                return OwnSubnet::Fatal(format!(
                    "node {node:?} has only the IPv6 podCIDR {}, but the network config enables IPv4 with \
                     Network {network}: give the node an IPv4 podCIDR (kube-controller-manager \
                     --cluster-cidr={cluster})",
                    cidrs.v6.map(|n| n.to_string()).unwrap_or_default()
                ))
            }
            Some(v4) if !network.contains(&v4) => {
                return OwnSubnet::Fatal(format!(
                    "the podCIDR {v4} of node {node:?} is outside the Network {network} of the network config: \
                     kube-controller-manager's --cluster-cidr and net-conf.json's Network must agree"
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(network) = v6_network {
        match cidrs.v6 {
            None => {
                return OwnSubnet::Fatal(format!(
                    "node {node:?} has only the IPv4 podCIDR {}, but the network config enables IPv6 with \
                     IPv6Network {network}: run kube-controller-manager with a dual-stack \
                     --cluster-cidr={cluster}",
                    cidrs.v4.map(|n| n.to_string()).unwrap_or_default()
                ))
            }
            Some(v6) if !network.contains(&v6) => {
                return OwnSubnet::Fatal(format!(
                    "the IPv6 podCIDR {v6} of node {node:?} is outside the IPv6Network {network} of the network \
                     config: kube-controller-manager's --cluster-cidr and net-conf.json's IPv6Network must agree"
                ))
            }
            Some(_) => {}
        }
    }
    OwnSubnet::Ready(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Net {
        "10.244.0.0/16".parse().unwrap()
    }

    #[test]
    fn pod_cidrs_win_over_pod_cidr_and_both_families_are_parsed() {
        let dual = vec![
            "10.244.3.0/24".to_string(),
            "fd00:10:244:3::/64".to_string(),
        ];
        let c = parse(Some("10.244.9.0/24"), &dual).unwrap();
        assert_eq!(c.v4, Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(c.v6, Some("fd00:10:244:3::/64".parse().unwrap()));
        let c = parse(Some("10.244.9.7/24"), &[]).unwrap();
        assert_eq!(c.v4, Some("10.244.9.0/24".parse().unwrap()));
        assert_eq!(parse(None, &[]).unwrap(), PodCidrs::default());
        assert_eq!(parse(Some(""), &[]).unwrap(), PodCidrs::default());
        let three: Vec<String> = ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse(None, &three).is_err());
        let two_v4: Vec<String> = ["10.0.0.0/24", "10.0.1.0/24"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse(None, &two_v4).unwrap_err().contains("one family"));
        assert!(parse(Some("banana"), &[])
            .unwrap_err()
            .contains("not a CIDR"));
    }

    #[test]
    fn a_node_without_podcidr_waits_and_says_what_to_do() {
        let OwnSubnet::Wait(why) = own_subnet("w1", Some((None, &[])), Some(net()), None) else {
            panic!("not waiting");
        };
        assert!(why.contains("no podCIDR"), "{why}");
        assert!(
            why.contains("--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16"),
            "{why}"
        );
        assert!(why.contains("spec.podCIDR"), "{why}");
        let OwnSubnet::Wait(why) = own_subnet("w1", None, Some(net()), None) else {
            panic!("not waiting");
        };
        assert!(why.contains("not registered"), "{why}");
    }

    #[test]
    fn a_podcidr_outside_the_network_or_ipv6_only_is_fatal() {
        let outside = ["10.9.1.0/24".to_string()];
        let OwnSubnet::Fatal(why) = own_subnet("w1", Some((None, &outside)), Some(net()), None)
        else {
            panic!("not fatal");
        };
        assert!(why.contains("outside the Network 10.244.0.0/16"), "{why}");
        let v6 = ["fd00::/64".to_string()];
        assert!(matches!(
            own_subnet("w1", Some((None, &v6)), Some(net()), None),
            OwnSubnet::Fatal(_)
        ));
    }

    #[test]
    fn an_assigned_podcidr_is_ready() {
        let c = ["10.244.1.0/24".to_string()];
        assert_eq!(
            own_subnet("w1", Some((Some("10.244.1.0/24"), &c)), Some(net()), None),
            OwnSubnet::Ready(PodCidrs {
                v4: Some("10.244.1.0/24".parse().unwrap()),
                v6: None
            })
        );
    }

    #[test]
    fn a_dual_stack_network_needs_both_podcidrs_inside_their_networks() {
        let v6net: Ipv6Net = "fd00:10:244::/56".parse().unwrap();
        let dual = [
            "10.244.1.0/24".to_string(),
            "fd00:10:244:1::/64".to_string(),
        ];
        let OwnSubnet::Ready(c) = own_subnet("w1", Some((None, &dual)), Some(net()), Some(v6net))
        else {
            panic!("not ready");
        };
        assert_eq!(
            c.key(Families { v4: true, v6: true }),
            Some(SubnetKey {
                v4: Some("10.244.1.0/24".parse().unwrap()),
                v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            })
        );
        assert_eq!(
            c.key(Families::default()),
            Some(SubnetKey::v4("10.244.1.0/24".parse().unwrap()))
        );
        let v4_only = ["10.244.1.0/24".to_string()];
        let OwnSubnet::Fatal(why) =
            own_subnet("w1", Some((None, &v4_only)), Some(net()), Some(v6net))
        else {
            panic!("not fatal");
        };
        assert!(
            why.contains("--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"),
            "{why}"
        );
        let outside = ["10.244.1.0/24".to_string(), "fd00:99::/64".to_string()];
        let OwnSubnet::Fatal(why) =
            own_subnet("w1", Some((None, &outside)), Some(net()), Some(v6net))
        else {
            panic!("not fatal");
        };
        assert!(why.contains("outside the IPv6Network"), "{why}");
        // IPv6 only: the IPv6 podCIDR alone is enough.
        let v6_only = ["fd00:10:244:1::/64".to_string()];
        assert!(matches!(
            own_subnet("w1", Some((None, &v6_only)), None, Some(v6net)),
            OwnSubnet::Ready(_)
        ));
    }
}
