//! Which container addresses the host ports forward to (docs/cni-spec-notes.md §12 portmap): the first IPv4 and the
//! first IPv6 address of `prevResult`, skipping addresses whose `interface` index names a host-side interface (no
//! sandbox) or an interface other than `CNI_IFNAME` — the reference's selection, so chains behave the same.

use std::net::{Ipv4Addr, Ipv6Addr};
use twill_cni::CniResult;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl ContainerIps {
    pub fn from_result(result: &CniResult, ifname: &str) -> ContainerIps {
        let mut out = ContainerIps::default();
        for ip in &result.ips {
            if let Some(idx) = ip.interface {
                if let Some(iface) = result.interfaces.get(idx) {
                    let in_sandbox = iface.sandbox.as_deref().is_some_and(|s| !s.is_empty());
                    if iface.name != ifname || !in_sandbox {
                        continue;
                    }
                }
            }
            match ip.address.addr() {
                std::net::IpAddr::V4(a) if out.v4.is_none() => out.v4 = Some(a),
                std::net::IpAddr::V6(a) if out.v6.is_none() => out.v6 = Some(a),
                _ => {}
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use twill_cni::Version;

    #[test]
    fn picks_the_first_sandbox_address_of_each_family() {
        let r = CniResult::from_json(
            &json!({"cniVersion":"1.0.0",
                "interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"},
                              {"name":"net1","sandbox":"/run/netns/x"}],
                "ips":[{"address":"10.0.0.1/24","interface":0},
                       {"address":"10.9.0.5/24","interface":3},
                       {"address":"10.0.0.5/24","interface":2},
                       {"address":"10.0.0.6/24","interface":2},
                       {"address":"fd00::5/64","interface":2},
                       {"address":"fd00::6/64"}]}),
            Version::V1_0_0,
        )
        .unwrap();
        let ips = ContainerIps::from_result(&r, "eth0");
        assert_eq!(ips.v4, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(ips.v6, Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn addresses_without_interface_index_count() {
        let r = CniResult::from_json(
            &json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.2/16"}]}),
            Version::V0_3_1,
        )
        .unwrap();
        let ips = ContainerIps::from_result(&r, "eth0");
        assert_eq!(ips.v4, Some("10.1.0.2".parse().unwrap()));
        assert_eq!(ips.v6, None);
    }
}
