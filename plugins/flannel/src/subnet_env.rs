//! `subnet.env`, the file the overlay daemon writes once the node has a subnet (docs/architecture.md,
//! flannel contracts, subnet.env). The format (shared with the daemon, the writer) lives in `twill-files`;
//! this module maps its errors to CNI codes and names the file.

use std::path::{Path, PathBuf};
use twill_cni::{Error, Result};

pub use twill_files::SubnetEnv;

/// The daemon's default location (`--subnet-file`).
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// Reads and validates the file. A missing file, a missing key or a value that does not parse is code 11
/// (try again later): the daemon has not (fully) written it yet, and a runtime retries ADD. The message
/// names the file and the key, because "no such file or directory" alone is what users could not act on
/// (the most reported flannel error: `subnet.env` missing while the daemon starts).
pub fn load(path: &Path) -> Result<SubnetEnv> {
    let text = read(path)?;
    parse(&text).map_err(|e| e.context(format!("subnet file {}", path.display())))
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

/// Parses the text of a `subnet.env`; anything unusable is code 11 naming the key.
pub fn parse(text: &str) -> Result<SubnetEnv> {
    twill_files::subnet_env::parse(text).map_err(|e| Error::try_again(e.to_string()))
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
            vec!["fd00:0:0:5::/64".parse::<ipnet::IpNet>().unwrap()]
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
        let e = load(Path::new("/nonexistent/twill/subnet.env")).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("/nonexistent/twill/subnet.env"), "{}", e.msg);
    }

    #[test]
    fn tolerates_comments_blank_lines_and_crlf() {
        let text = format!("# written by twilld\n\n{}", DAEMON_V4.replace('\n', "\r\n"));
        assert_eq!(parse(&text).unwrap(), parse(DAEMON_V4).unwrap());
    }
}
