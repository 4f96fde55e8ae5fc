//! `subnet.env`, the file the overlay daemon writes once the node has a subnet and its data path is
//! programmed, and the flannel CNI plugin reads on every ADD: dotenv lines, `KEY=value`, no quoting, in
//! flannel's exact format so either side can be flannel's.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16          (IPv4 networks, comma list)
//! FLANNEL_SUBNET=10.244.1.1/24           (the node's IPv4 gateway address and subnet prefix)
//! FLANNEL_IPV6_NETWORK=2001:cafe:42::/56 (IPv6 networks, comma list)
//! FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//! The lines of a family the cluster does not use are absent.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::atomic::{create_missing_dirs, write_atomically, FileError};

/// A complete `subnet.env`: at least one family's networks and subnet, the MTU and the masquerade flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (comma list, normalised to network addresses, de-duplicated): IPv4 pod networks.
    pub networks_v4: Vec<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK` (comma list, normalised, de-duplicated).
    pub networks_v6: Vec<Ipv6Net>,
    /// `FLANNEL_SUBNET` as written: the gateway address with the subnet's prefix (10.244.1.1/24).
    pub subnet_v4: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_SUBNET` as written.
    pub subnet_v6: Option<Ipv6Net>,
    /// `FLANNEL_MTU`: the overlay device's MTU, which bridges and veths must use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: true only for the literal `true`, as flannel reads it. When the daemon masquerades,
    /// the bridge must not do it a second time.
    pub ipmasq: bool,
}

/// Why a `subnet.env` text is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetEnvError {
    /// Keys absent (the daemon has not, or not fully, written the file).
    Missing(Vec<&'static str>),
    /// A key whose value does not parse.
    Invalid {
        key: &'static str,
        value: String,
        want: &'static str,
    },
}

impl fmt::Display for SubnetEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetEnvError::Missing(keys) => write!(f, "incomplete: missing {}", keys.join(", ")),
            SubnetEnvError::Invalid { key, value, want } => {
                write!(f, "invalid {key}={value:?}: expected {want}")
            }
        }
    }
}

impl std::error::Error for SubnetEnvError {}

/// The `FLANNEL_SUBNET` value for a node subnet: its first address (network + 1, the bridge's gateway) with
/// the subnet's prefix.
pub fn gateway_v4(subnet: Ipv4Net) -> Ipv4Net {
    let gw = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
    Ipv4Net::new(gw, subnet.prefix_len()).unwrap_or(subnet)
}

/// The `FLANNEL_IPV6_SUBNET` value for a node subnet (network + 1 with the subnet's prefix).
pub fn gateway_v6(subnet: Ipv6Net) -> Ipv6Net {
    let gw = Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1));
    Ipv6Net::new(gw, subnet.prefix_len()).unwrap_or(subnet)
}

impl SubnetEnv {
    /// flannel's exact format and line order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.networks_v4.is_empty() {
            out += &format!("FLANNEL_NETWORK={}\n", join(&self.networks_v4));
        }
        if let Some(s) = self.subnet_v4 {
            out += &format!("FLANNEL_SUBNET={s}\n");
        }
        if !self.networks_v6.is_empty() {
            out += &format!("FLANNEL_IPV6_NETWORK={}\n", join(&self.networks_v6));
        }
        if let Some(s) = self.subnet_v6 {
            out += &format!("FLANNEL_IPV6_SUBNET={s}\n");
        }
        out += &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq);
        out
    }

    /// Writes the file atomically with mode 0644 (the CNI plugin reads it), creating missing directories
    /// with mode 0755 and leaving existing ones alone.
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_missing_dirs(dir, 0o755)?;
        }
        write_atomically(path, self.render().as_bytes(), 0o644)
    }

    /// The node's IPv4 subnet as a network (10.244.1.1/24 -> 10.244.1.0/24).
    pub fn node_network_v4(&self) -> Option<Ipv4Net> {
        self.subnet_v4.map(|n| n.trunc())
    }

    pub fn node_network_v6(&self) -> Option<Ipv6Net> {
        self.subnet_v6.map(|n| n.trunc())
    }

    /// The node networks of both families, v4 first (host-local's `ranges` order).
    pub fn node_networks(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        out.extend(self.node_network_v4().map(IpNet::V4));
        out.extend(self.node_network_v6().map(IpNet::V6));
        out
    }

    /// The cluster networks of both families, v4 first.
    pub fn cluster_networks(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self.networks_v4.iter().copied().map(IpNet::V4).collect();
        out.extend(self.networks_v6.iter().copied().map(IpNet::V6));
        out
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits the text into `(key, value)` pairs: lines split on the first `=`, both sides trimmed; blank lines,
/// comments and lines without `=` skipped.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Parses the text of a `subnet.env`. Unknown keys are ignored; a repeated key takes its last value (as
/// flannel's scanner does). Complete means what flannel's plugin requires: one family of each is enough.
pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
    let mut networks_v4: Option<Vec<Ipv4Net>> = None;
    let mut networks_v6: Option<Vec<Ipv6Net>> = None;
    let mut subnet_v4 = None;
    let mut subnet_v6 = None;
    let mut mtu = None;
    let mut ipmasq = None;
    for (key, value) in pairs(text) {
        match key {
            "FLANNEL_NETWORK" => networks_v4 = Some(network_list("FLANNEL_NETWORK", value)?),
            "FLANNEL_IPV6_NETWORK" => {
                networks_v6 = Some(network_list("FLANNEL_IPV6_NETWORK", value)?)
            }
            "FLANNEL_SUBNET" => subnet_v4 = Some(one_cidr::<Ipv4Net>("FLANNEL_SUBNET", value)?),
            "FLANNEL_IPV6_SUBNET" => {
                subnet_v6 = Some(one_cidr::<Ipv6Net>("FLANNEL_IPV6_SUBNET", value)?)
            }
            "FLANNEL_MTU" => {
                mtu = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|m| *m > 0)
                        .ok_or_else(|| {
                            invalid("FLANNEL_MTU", value, "a positive number of bytes")
                        })?,
                )
            }
            "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
            _ => {}
        }
    }
    let networks_v4 = networks_v4.unwrap_or_default();
    let networks_v6 = networks_v6.unwrap_or_default();
    let mut missing = Vec::new();
    if networks_v4.is_empty() && networks_v6.is_empty() {
        missing.push("FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK");
    }
    if subnet_v4.is_none() && subnet_v6.is_none() {
        missing.push("FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET");
    }
    if mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    match (mtu, ipmasq) {
        (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(SubnetEnv {
            networks_v4,
            networks_v6,
            subnet_v4,
            subnet_v6,
            mtu,
            ipmasq,
        }),
        _ => Err(SubnetEnvError::Missing(missing)),
    }
}

/// The node subnets a previous run left in the file (`FLANNEL_SUBNET=10.5.52.1/24` means `10.5.52.0/24`),
/// read key by key as flanneld does at start-up, so an incomplete or partly invalid file still yields what
/// it has. A missing or unreadable file yields nothing.
pub fn previous_subnets(path: &Path) -> (Option<Ipv4Net>, Option<Ipv6Net>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let (mut v4, mut v6) = (None, None);
    for (key, value) in pairs(&text) {
        match key {
            "FLANNEL_SUBNET" => v4 = value.parse::<Ipv4Net>().ok().map(|n| n.trunc()),
            "FLANNEL_IPV6_SUBNET" => v6 = value.parse::<Ipv6Net>().ok().map(|n| n.trunc()),
            _ => {}
        }
    }
    (v4, v6)
}

fn invalid(key: &'static str, value: &str, want: &'static str) -> SubnetEnvError {
    SubnetEnvError::Invalid {
        key,
        value: value.to_string(),
        want,
    }
}

fn one_cidr<T: std::str::FromStr + Family>(
    key: &'static str,
    value: &str,
) -> Result<T, SubnetEnvError> {
    value.parse::<T>().map_err(|_| invalid(key, value, T::WANT))
}

/// A comma list of networks; each is normalised to its network address and duplicates dropped.
fn network_list<T: std::str::FromStr + Family + PartialEq + Copy>(
    key: &'static str,
    value: &str,
) -> Result<Vec<T>, SubnetEnvError> {
    let mut out: Vec<T> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = one_cidr::<T>(key, item)?.normalise();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    if out.is_empty() {
        return Err(invalid(key, value, T::WANT));
    }
    Ok(out)
}

/// What differs between the two families for parsing.
trait Family: Sized {
    const WANT: &'static str;
    fn normalise(self) -> Self;
}

impl Family for Ipv4Net {
    const WANT: &'static str = "an IPv4 CIDR such as 10.244.0.0/16";
    fn normalise(self) -> Self {
        self.trunc()
    }
}

impl Family for Ipv6Net {
    const WANT: &'static str = "an IPv6 CIDR such as fd00:42::/56";
    fn normalise(self) -> Self {
        self.trunc()
    }
}

#[cfg(test)]
#[path = "subnet_env_tests.rs"]
mod tests;
