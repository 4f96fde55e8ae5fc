//! Shaping the IPAM result into the bridge's result and gateway plan (docs/cni-spec-notes.md §10.2 step 7, the
//! reference's `calcGateways`): every IP points at the container interface, a missing gateway becomes the
//! subnet's first address when `isGateway`, `isDefaultGateway` adds a default route per family unless IPAM
//! already returned one with a gateway, and the gateway addresses for the bridge are collected per family.

use crate::config::BridgeConf;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use twill_cni::{CniResult, Error, Result, Route};

/// Index of the container interface in `[bridge, host veth, container veth]`.
pub const CONTAINER_INTERFACE_INDEX: usize = 2;

/// Gateway addresses (with the pod subnet's prefix) to put on the bridge, per family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gateways {
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
}

/// The first address of the subnet: network + 1.
pub fn first_host(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
    }
}

fn default_dst(v4: bool) -> IpNet {
    if v4 {
        IpNet::V4(Default::default())
    } else {
        IpNet::V6(Default::default())
    }
}

/// Apply docs/cni-spec-notes.md §10.2 step 7 to `result` in place and return the bridge's gateway addresses.
pub fn shape(result: &mut CniResult, conf: &BridgeConf) -> Result<Gateways> {
    let mut gws = Gateways::default();
    let mut default_found = [false, false];
    for i in 0..result.ips.len() {
        let ip = &mut result.ips[i];
        let v4 = ip.address.addr().is_ipv4();
        ip.interface = Some(CONTAINER_INTERFACE_INDEX);
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(first_host(&ip.address));
        }
        let gateway = ip.gateway;
        let address = ip.address;
        if let Some(gw) = gateway {
            if gw.is_ipv4() != v4 {
                return Err(Error::failed(format!(
                    "IPAM returned gateway {gw} of another family than address {address}"
                )));
            }
        }
        let fam = usize::from(!v4);
        if conf.is_default_gateway && !default_found[fam] {
            let dst = default_dst(v4);
            default_found[fam] = result.routes.iter().any(|r| r.gw.is_some() && r.dst == dst);
            if !default_found[fam] {
                result.routes.push(Route::new(dst, gateway));
                default_found[fam] = true;
            }
        }
        if conf.is_gateway {
            if let Some(gw) = gateway {
                let net = IpNet::new(gw, address.prefix_len()).map_err(|e| {
                    Error::failed(format!("gateway {gw}/{}: {e}", address.prefix_len()))
                })?;
                if v4 {
                    gws.v4.push(net);
                } else {
                    gws.v6.push(net);
                }
            }
        }
    }
    Ok(gws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_cni::IpConfig;

    fn conf(gw: bool, default_gw: bool) -> BridgeConf {
        BridgeConf {
            bridge: "cni0".into(),
            is_gateway: gw || default_gw,
            is_default_gateway: default_gw,
            force_address: false,
            ip_masq: false,
            masq_backend: crate::config::MasqBackend::Nftables,
            mtu: None,
            hairpin: false,
            promisc: false,
            vlan: None,
            vlan_trunk: vec![],
            preserve_default_vlan: false,
            macspoofchk: false,
            enable_dad: false,
            disable_container_interface: false,
            port_isolation: false,
            ipam_type: Some("host-local".into()),
            dns: None,
            mac: None,
        }
    }

    fn ip(a: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            interface: None,
            address: a.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn missing_gateway_is_first_host_and_default_routes_per_family() {
        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", None), ip("fd00:1::7/64", None)],
            ..Default::default()
        };
        let g = shape(&mut r, &conf(false, true)).unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.1.2.1".parse().unwrap()));
        assert_eq!(r.ips[1].gateway, Some("fd00:1::1".parse().unwrap()));
        assert!(r.ips.iter().all(|i| i.interface == Some(2)));
        assert_eq!(g.v4, vec!["10.1.2.1/24".parse::<IpNet>().unwrap()]);
        assert_eq!(g.v6, vec!["fd00:1::1/64".parse::<IpNet>().unwrap()]);
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[1].dst.to_string(), "::/0");
    }

    #[test]
    fn ipam_default_route_with_gateway_is_kept() {
        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", Some("10.1.2.254"))],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.2.254".parse().unwrap()),
            )],
            ..Default::default()
        };
        shape(&mut r, &conf(false, true)).unwrap();
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn without_is_gateway_nothing_goes_on_the_bridge() {
        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", None)],
            ..Default::default()
        };
        let g = shape(&mut r, &conf(false, false)).unwrap();
        assert_eq!(g, Gateways::default());
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.routes.is_empty());
    }
}
