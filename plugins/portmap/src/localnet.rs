//! `127.0.0.1` host ports (docs/cni-spec-notes.md §12 portmap): a packet from 127.0.0.1 DNAT'd to a pod leaves through
//! the interface that routes to the pod, and the kernel drops loopback sources on other interfaces unless that
//! interface has `route_localnet=1`. Like the reference, set it on the interface routing to the container (found by
//! longest-prefix match in the main table) and never reset it: other pods may rely on it.

use std::net::Ipv4Addr;
use twill_cni::{Error, Result};

/// The interface the main IPv4 table routes `ip` through, from `/proc/net/route` (this process's netns).
pub fn route_interface(ip: Ipv4Addr) -> Result<Option<String>> {
    let text = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| Error::failed(format!("read /proc/net/route: {e}")))?;
    Ok(best_route(&text, ip))
}

fn best_route(table: &str, ip: Ipv4Addr) -> Option<String> {
    let target = u32::from(ip);
    let mut best: Option<(u32, String)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Destination and Mask are the in-memory (network order) u32 printed as host-endian hex.
        let parse = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
        };
        let (Some(dst), Some(mask)) = (parse(f[1]), parse(f[7])) else {
            continue;
        };
        if target & mask != dst {
            continue;
        }
        let len = mask.count_ones();
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, f[0].to_string()));
        }
    }
    best.map(|(_, name)| name)
}

/// Sets `net.ipv4.conf.<ifname>.route_localnet = 1`.
pub fn enable(ifname: &str) -> Result<()> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(Error::failed(format!(
            "route_localnet: bad interface name {ifname:?}"
        )));
    }
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|e| Error::failed(format!("set {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
cni0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(
            best_route(table, "10.88.0.5".parse().unwrap()).as_deref(),
            Some("cni0")
        );
        assert_eq!(
            best_route(table, "10.1.0.5".parse().unwrap()).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            best_route(table, "8.8.8.8".parse().unwrap()).as_deref(),
            Some("eth0")
        );
    }
}
