//! `subnet.env`, the file the overlay daemon writes once the node has a subnet (docs/architecture.md, flannel
//! contracts, subnet.env): dotenv lines, `KEY=value`, no quoting. What the plugin needs from it is the node's subnets,
//! the cluster networks, the MTU and whether the daemon masquerades.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::path::{Path, PathBuf};
use twill_cni::{Error, Result};

/// The daemon's default location (`--subnet-file`).
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// A complete `subnet.env`: every key ADD needs is present and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (comma list, de-duplicated): the cluster's IPv4 pod networks.
    pub networks_v4: Vec<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK` (comma list, de-duplicated).
    pub networks_v6: Vec<Ipv6Net>,
    /// `FLANNEL_SUBNET` as written (gateway address and prefix, e.g. 10.244.1.1/24).
    pub subnet_v4: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_SUBNET` as written.
    pub subnet_v6: Option<Ipv6Net>,
    /// `FLANNEL_MTU`: the overlay device's MTU, which the bridge and veths must use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: true only for the literal `true`, as the reference reads it; when the daemon
    /// masquerades, the bridge must not do it a second time.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Reads and validates the file. A missing file, a missing key or a value that does not parse is code 11
    /// (try again later): the daemon has not (fully) written it yet, and a runtime retries ADD. The message
    /// names the file and the key, because "no such file or directory" alone is what users could not act on
    /// (the most reported flannel error: `subnet.env` missing while the daemon starts).
    pub fn load(path: &Path) -> Result<SubnetEnv> {
        let text = read(path)?;
        parse(&text).map_err(|e| e.context(format!("subnet file {}", path.display())))
    }

    /// The node's IPv4 subnet as a network (10.244.1.1/24 -> 10.244.1.0/24): host-local's range.
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

fn read(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::try_again(format!(
            "{} does not exist: the overlay daemon has not written this node's subnet yet \
             (is it running?)",
            path.display()
        ))),
        Err(e) => Err(Error::failed(format!("read {}: {e}", path.display()))),
    }
}

/// The subnet file a config names (`subnetFile`), or the default.
pub fn path_or_default(configured: Option<&str>) -> PathBuf {
    PathBuf::from(configured.unwrap_or(DEFAULT_PATH))
}

/// Parses the text of a `subnet.env`. Lines are split on the first `=`; blank lines, comments and unknown keys
/// are ignored; a repeated key takes its last value (as the reference's scanner does).
pub fn parse(text: &str) -> Result<SubnetEnv> {
    let mut networks_v4: Option<Vec<Ipv4Net>> = None;
    let mut networks_v6: Option<Vec<Ipv6Net>> = None;
    let mut subnet_v4 = None;
    let mut subnet_v6 = None;
    let mut mtu = None;
    let mut ipmasq = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "FLANNEL_NETWORK" => networks_v4 = Some(network_list(key, value)?),
            "FLANNEL_IPV6_NETWORK" => networks_v6 = Some(network_list(key, value)?),
            "FLANNEL_SUBNET" => subnet_v4 = Some(one_cidr::<Ipv4Net>(key, value)?),
            "FLANNEL_IPV6_SUBNET" => subnet_v6 = Some(one_cidr::<Ipv6Net>(key, value)?),
            "FLANNEL_MTU" => {
                mtu = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|m| *m > 0)
                        .ok_or_else(|| invalid(key, value, "a positive number of bytes"))?,
                )
            }
            "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
            _ => {}
        }
    }
    let networks_v4 = networks_v4.unwrap_or_default();
    let networks_v6 = networks_v6.unwrap_or_default();
    // Same completeness rule as the reference's missingFields: one family of each is enough.
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
    let (Some(mtu), Some(ipmasq), true) = (mtu, ipmasq, missing.is_empty()) else {
        return Err(Error::try_again(format!(
            "incomplete: missing {}",
            missing.join(", ")
        )));
    };
    Ok(SubnetEnv {
        networks_v4,
        networks_v6,
        subnet_v4,
        subnet_v6,
        mtu,
        ipmasq,
    })
}

fn invalid(key: &str, value: &str, want: &str) -> Error {
    Error::try_again(format!("invalid {key}={value:?}: expected {want}"))
}

fn one_cidr<T: std::str::FromStr + Family>(key: &str, value: &str) -> Result<T> {
    value.parse::<T>().map_err(|_| invalid(key, value, T::WANT))
}

/// A comma list of networks; each is normalised to its network address and duplicates dropped.
fn network_list<T: std::str::FromStr + Family + PartialEq + Copy>(
    key: &str,
    value: &str,
) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = one_cidr::<T>(key, item)?.network();
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
    fn network(self) -> Self;
}

impl Family for Ipv4Net {
    const WANT: &'static str = "an IPv4 CIDR such as 10.244.0.0/16";
    fn network(self) -> Self {
        self.trunc()
    }
}

impl Family for Ipv6Net {
    const WANT: &'static str = "an IPv6 CIDR such as fd00:42::/56";
    fn network(self) -> Self {
        self.trunc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON_V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn parses_what_the_daemon_writes() {
        let env = parse(DAEMON_V4).unwrap();
        assert_eq!(env.networks_v4, vec!["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(env.subnet_v4, Some("10.244.1.1/24".parse().unwrap()));
        assert_eq!(
            env.node_network_v4(),
            Some("10.244.1.0/24".parse().unwrap())
        );
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
        assert!(env.subnet_v6.is_none());
    }

    #[test]
    fn parses_dual_stack_and_comma_lists_deduplicated() {
        let env = parse(
            "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\n\
             FLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56, fd00::/48\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(env.networks_v4.len(), 2);
        assert_eq!(env.networks_v6.len(), 2);
        assert_eq!(
            env.node_network_v6(),
            Some("2001:cafe:42::/64".parse().unwrap())
        );
        assert!(!env.ipmasq);
        assert_eq!(env.node_networks().len(), 2);
        assert_eq!(env.cluster_networks().len(), 4);
    }

    #[test]
    fn ipv6_only_is_complete() {
        let env = parse(
            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:5::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert!(env.subnet_v4.is_none());
        assert_eq!(
            env.node_networks(),
            vec!["fd00:0:0:5::/64".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn ipmasq_is_true_only_for_the_literal_true() {
        let text = DAEMON_V4.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=TRUE");
        assert!(!parse(&text).unwrap().ipmasq);
    }

    #[test]
    fn missing_keys_are_try_again_and_named() {
        let e = parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n").unwrap_err();
        assert_eq!(e.code, 11);
        assert!(
            e.msg.contains("FLANNEL_MTU") && e.msg.contains("FLANNEL_IPMASQ"),
            "{}",
            e.msg
        );
        let e = parse("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert!(
            e.msg.contains("FLANNEL_SUBNET") && e.msg.contains("FLANNEL_NETWORK"),
            "{}",
            e.msg
        );
        assert_eq!(parse("").unwrap_err().code, 11);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (from, to, key) in [
            (
                "FLANNEL_SUBNET=10.244.1.1/24",
                "FLANNEL_SUBNET=10.244.1.1",
                "FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.244.1.1/24",
                "FLANNEL_SUBNET=fd00::1/64",
                "FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16",
                "FLANNEL_NETWORK=10.244.0.0/16,x",
                "FLANNEL_NETWORK",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16",
                "FLANNEL_NETWORK=",
                "FLANNEL_NETWORK",
            ),
            ("FLANNEL_MTU=1450", "FLANNEL_MTU=big", "FLANNEL_MTU"),
            ("FLANNEL_MTU=1450", "FLANNEL_MTU=0", "FLANNEL_MTU"),
        ] {
            let e = parse(&DAEMON_V4.replace(from, to)).unwrap_err();
            assert_eq!(e.code, 11, "{to}");
            assert!(e.msg.contains(key), "{to}: {}", e.msg);
        }
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = SubnetEnv::load(Path::new("/nonexistent/twill/subnet.env")).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("/nonexistent/twill/subnet.env"), "{}", e.msg);
    }

    #[test]
    fn tolerates_comments_blank_lines_and_crlf() {
        let text = format!("# written by twilld\n\n{}", DAEMON_V4.replace('\n', "\r\n"));
        assert_eq!(parse(&text).unwrap(), parse(DAEMON_V4).unwrap());
    }
}
