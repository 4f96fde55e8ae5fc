//! What tests wire by hand on a cluster node, with no plugin or daemon involved: a pod behind a bridge, one end of
//! a flannel-style VXLAN path (the overlay benchmarks' baseline), an FDB entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use ipnet::IpNet;

use crate::cluster::Node;
use crate::netns::Netns;

/// One node's end of a hand-wired VXLAN path, as flannel wires one (VNI 42, port 8472, over `eth0`, no
/// learning): device `dev` with `mac` and `mtu`, from underlay address `local`, holding its subnet's network
/// address (as a host address); for the peer's subnet a permanent neighbour (its network address, `peer_mac`),
/// an FDB entry to `peer_underlay` and an onlink route via that neighbour.
pub struct HandVxlan<'a> {
    pub dev: &'a str,
    pub mac: &'a str,
    pub mtu: u32,
    pub local: IpAddr,
    pub subnet: IpNet,
    pub peer_subnet: IpNet,
    pub peer_mac: &'a str,
    pub peer_underlay: IpAddr,
}

impl Node {
    /// A pod namespace of `subnet` (IPv4 or IPv6) behind bridge `cni0` on this node (created on first use, with
    /// the subnet's first address as gateway), wired as the bridge plugin does: a veth `veth<host>` with `mtu`,
    /// the pod's address the subnet's `host`th, a default route via the gateway; IPv6 addresses skip duplicate
    /// address detection. Its namespace and address.
    pub fn add_bridged_pod(&self, subnet: IpNet, mtu: u32, host: u16) -> (Netns, IpAddr) {
        let (gw, ip) = match subnet.network() {
            IpAddr::V4(net) => {
                let base = u32::from(net);
                (
                    IpAddr::from(Ipv4Addr::from(base + 1)),
                    IpAddr::from(Ipv4Addr::from(base + u32::from(host))),
                )
            }
            IpAddr::V6(net) => {
                let base = u128::from(net);
                (
                    IpAddr::from(Ipv6Addr::from(base + 1)),
                    IpAddr::from(Ipv6Addr::from(base + u128::from(host))),
                )
            }
        };
        let v6 = ip.is_ipv6();
        let len = subnet.prefix_len();
        let mtu = mtu.to_string();
        let addr_add = |ns: &Netns, addr: String, dev: &str| {
            let mut args = vec!["addr", "add", addr.as_str(), "dev", dev];
            if v6 {
                args.push("nodad");
            }
            ns.ip(&args);
        };
        if self.ns.link_flags("cni0").is_none() {
            self.ns
                .ip(&["link", "add", "cni0", "mtu", &mtu, "type", "bridge"]);
            addr_add(&self.ns, format!("{gw}/{len}"), "cni0");
            self.ns.ip(&["link", "set", "cni0", "up"]);
        }
        let pod = Netns::new(if v6 { "pod6" } else { "pod" });
        let host_if = format!("veth{host}");
        self.ns.ip(&[
            "link",
            "add",
            &host_if,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            pod.name(),
        ]);
        self.ns
            .ip(&["link", "set", &host_if, "master", "cni0", "up"]);
        pod.ip(&["link", "set", "lo", "up"]);
        addr_add(&pod, format!("{ip}/{len}"), "eth0");
        pod.ip(&["link", "set", "eth0", "up"]);
        let family = if v6 { "-6" } else { "-4" };
        pod.ip(&[family, "route", "add", "default", "via", &gw.to_string()]);
        (pod, ip)
    }

    /// This node's end of a VXLAN path wired by hand the way flannel wires its own (the benchmarks' baseline):
    /// see [`HandVxlan`].
    pub fn wire_vxlan_by_hand(&self, vx: &HandVxlan) {
        let (dev, v6) = (vx.dev, vx.local.is_ipv6());
        let family = if v6 { "-6" } else { "-4" };
        let (mtu, local) = (vx.mtu.to_string(), vx.local.to_string());
        self.ip(&[
            "link",
            "add",
            dev,
            "address",
            vx.mac,
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "8472",
            "local",
            &local,
            "dev",
            "eth0",
            "nolearning",
        ]);
        let own = IpNet::from(vx.subnet.network()).to_string();
        let mut addr = vec!["addr", "add", own.as_str(), "dev", dev];
        if v6 {
            addr.push("nodad");
        }
        self.ip(&addr);
        self.ip(&["link", "set", dev, "up"]);
        let peer = vx.peer_subnet.network().to_string();
        self.ip(&[
            family,
            "neigh",
            "replace",
            &peer,
            "lladdr",
            vx.peer_mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
        let remote = vx.peer_underlay.to_string();
        self.fdb_append(vx.peer_mac, dev, &remote, &["self", "permanent"]);
        let peer_subnet = vx.peer_subnet.to_string();
        self.ip(&[
            family,
            "route",
            "add",
            &peer_subnet,
            "via",
            &peer,
            "dev",
            dev,
            "onlink",
        ]);
    }

    /// `bridge fdb append <mac> dev <dev> dst <dst> <extra…>` inside the node; panics when it fails.
    pub fn fdb_append(&self, mac: &str, dev: &str, dst: &str, extra: &[&str]) {
        let status = Command::new("bridge")
            .args([
                "-n",
                self.ns.name(),
                "fdb",
                "append",
                mac,
                "dev",
                dev,
                "dst",
                dst,
            ])
            .args(extra)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "bridge fdb append {mac} dev {dev} dst {dst} {extra:?} in {}: {status:?}",
            self.name()
        );
    }
}
