//! host-local's configuration (docs/cni-spec-notes.md §11.1): every key of the reference, validated up front so that
//! bad input is a code-7 error naming the field before anything touches the disk.
//!
//! Range sets are assembled in the reference's order: `runtimeConfig.ipRanges` first, then the legacy
//! single-range keys (`ipam.subnet`, `rangeStart`, `rangeEnd`, `gateway`), then `ipam.ranges`. Requested
//! addresses from `runtimeConfig.ips`, `args.cni.ips` and `CNI_ARGS` `IP=` are accumulated, not prioritised,
//! as the reference does.

use crate::range::{Family, RangeSet, RangeSpec};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use twill_cni::{args::CniArgs, Error, NetConf, NetworkName, Result, Route, Version};

/// Where leases live unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The validated configuration of one request.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: NetworkName,
    pub data_dir: PathBuf,
    /// One address of the result per set, in this order; the set's index names its `last_reserved_ip.<N>`.
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    /// Addresses the runtime asked for, de-duplicated, in the order given.
    pub requested: Vec<IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

impl RawRange {
    fn spec(&self) -> RangeSpec {
        RangeSpec {
            subnet: self.subnet.clone(),
            range_start: self.range_start.clone(),
            range_end: self.range_end.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawIpam {
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default, rename = "resolvConf")]
    resolv_conf: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntimeConfig {
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default, rename = "ipRanges")]
    ip_ranges: Option<Vec<Vec<RawRange>>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgsCni {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    #[serde(default)]
    cni: Option<RawArgsCni>,
}

#[derive(Debug, Deserialize)]
struct RawConf {
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    args: Option<RawArgs>,
}

/// A requested address: `10.0.0.5` or, as the reference's `ip.IP` also accepts, `10.0.0.5/24`.
fn parse_requested(field: &str, s: &str) -> std::result::Result<IpAddr, String> {
    let addr = s.trim().split('/').next().unwrap_or_default();
    addr.parse()
        .map_err(|_| format!("{field}: invalid IP address {s:?}"))
}

impl IpamConfig {
    /// Parse and validate the request config. `CNI_ARGS` may only carry `IP` (plus `IgnoreUnknown` and
    /// whatever it excuses).
    pub fn from_netconf(conf: &NetConf, cni_args: &CniArgs) -> Result<IpamConfig> {
        let raw: RawConf = conf.plugin_config()?;
        let ipam = raw
            .ipam
            .ok_or_else(|| Error::invalid_config("ipam: IPAM config missing 'ipam' key"))?;
        let runtime = raw.runtime_config.unwrap_or_default();

        // (label, set) in the reference's order.
        let mut labelled: Vec<(String, RangeSet)> = Vec::new();
        for (i, set) in runtime.ip_ranges.iter().flatten().enumerate() {
            let label = format!("runtimeConfig.ipRanges[{i}]");
            let specs: Vec<RangeSpec> = set.iter().map(RawRange::spec).collect();
            labelled.push((
                label.clone(),
                RangeSet::from_specs(&label, &specs).map_err(Error::invalid_config)?,
            ));
        }
        if ipam.legacy.subnet.as_deref().is_some_and(|s| !s.is_empty()) {
            let set = RangeSet::from_specs("ipam", &[ipam.legacy.spec()])
                // One-range set: the range's own path is "ipam[0]"; the keys are really top-level ones.
                .map_err(|e| Error::invalid_config(e.replacen("ipam[0]", "ipam", 1)))?;
            labelled.push(("ipam".into(), set));
        }
        for (i, set) in ipam.ranges.iter().flatten().enumerate() {
            let label = format!("ipam.ranges[{i}]");
            let specs: Vec<RangeSpec> = set.iter().map(RawRange::spec).collect();
            labelled.push((
                label.clone(),
                RangeSet::from_specs(&label, &specs).map_err(Error::invalid_config)?,
            ));
        }
        if labelled.is_empty() {
            return Err(Error::invalid_config(
                "ipam.ranges: no IP ranges specified (give ipam.ranges or ipam.subnet)",
            ));
        }
        for (i, (label_a, a)) in labelled.iter().enumerate() {
            for (label_b, b) in labelled.iter().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(Error::invalid_config(format!(
                        "{label_b}: range set overlaps with {label_a}"
                    )));
                }
            }
        }
        let count = |f: Family| labelled.iter().filter(|(_, s)| s.family() == f).count();
        if (count(Family::V4) > 1 || count(Family::V6) > 1) && conf.version < Version::V0_3_0 {
            return Err(Error::invalid_config(format!(
                "ipam.ranges: CNI version {} does not support more than 1 address per family",
                conf.version
            )));
        }

        let mut requested: Vec<IpAddr> = Vec::new();
        let mut push = |ip: IpAddr| {
            if !requested.contains(&ip) {
                requested.push(ip);
            }
        };
        for (i, s) in runtime.ips.iter().flatten().enumerate() {
            push(
                parse_requested(&format!("runtimeConfig.ips[{i}]"), s)
                    .map_err(Error::invalid_config)?,
            );
        }
        let args_ips = raw.args.and_then(|a| a.cni).and_then(|c| c.ips);
        for (i, s) in args_ips.iter().flatten().enumerate() {
            push(parse_requested(&format!("args.cni.ips[{i}]"), s).map_err(Error::invalid_config)?);
        }
        cni_args.check_known(&["IP"])?;
        if let Some(list) = cni_args.get("IP").filter(|s| !s.is_empty()) {
            for item in list.split(',') {
                push(parse_requested("CNI_ARGS IP", item).map_err(Error::invalid_env)?);
            }
        }

        Ok(IpamConfig {
            network: conf.name.clone(),
            data_dir: PathBuf::from(
                ipam.data_dir
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()),
            ),
            range_sets: labelled.into_iter().map(|(_, s)| s).collect(),
            routes: ipam.routes.unwrap_or_default(),
            resolv_conf: ipam
                .resolv_conf
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value, args: &str) -> Result<IpamConfig> {
        let conf = NetConf::parse(v.to_string().as_bytes()).unwrap();
        IpamConfig::from_netconf(&conf, &CniArgs::parse(args).unwrap())
    }

    fn err(v: Value) -> Error {
        parse(v, "").unwrap_err()
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            json!({
                "cniVersion": "1.0.0", "name": "net1",
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254",
                    "ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "10.2.0.0/24"}, {"subnet": "10.3.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}],
                    "dataDir": "/run/x", "resolvConf": "/etc/r.conf"
                },
                "runtimeConfig": {"ips": ["10.1.0.15/16"], "ipRanges": [[{"subnet": "10.9.0.0/24"}]]},
                "args": {"cni": {"ips": ["fd00::5", "10.1.0.15"]}}
            }),
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.2.0.7,10.3.0.8",
        )
        .unwrap();
        assert_eq!(c.network.as_str(), "net1");
        assert_eq!(c.data_dir, PathBuf::from("/run/x"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/r.conf")));
        assert_eq!(c.routes.len(), 2);
        let firsts: Vec<String> = c
            .range_sets
            .iter()
            .map(|s| s.ranges()[0].subnet.to_string())
            .collect();
        assert_eq!(
            firsts,
            ["10.9.0.0/24", "10.1.0.0/16", "fd00::/64", "10.2.0.0/24"]
        );
        assert_eq!(
            c.range_sets[1].ranges()[0].gateway.to_string(),
            "10.1.0.254"
        );
        let req: Vec<String> = c.requested.iter().map(|i| i.to_string()).collect();
        assert_eq!(req, ["10.1.0.15", "fd00::5", "10.2.0.7", "10.3.0.8"]);
        assert_eq!(c.data_dir, PathBuf::from("/run/x"));
    }

    #[test]
    fn data_dir_defaults_to_var_lib_cni_networks() {
        let c = parse(json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}}), "").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn validation_errors_are_code_7_and_name_the_field() {
        let cases = [
            (json!({"name": "n"}), "ipam"),
            (json!({"name": "n", "ipam": {}}), "ipam.ranges"),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.1/24"}}),
                "ipam.subnet",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}]]}}),
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}}),
                "ipam.ranges[1]",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}}),
                "ipam.ranges[0][1].subnet",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[{"subnet": 5}]]}}),
                "ipam.ranges[0][0].subnet",
            ),
            (
                json!({"name": "n", "ipam": {"ranges": [[]]}}),
                "ipam.ranges[0]",
            ),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "runtimeConfig": {"ips": ["nope"]}}),
                "runtimeConfig.ips[0]",
            ),
            (
                json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "args": {"cni": {"ips": ["1.2.3"]}}}),
                "args.cni.ips[0]",
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}}),
                "more than 1 address per family",
            ),
        ];
        for (conf, field) in cases {
            let e = err(conf.clone());
            assert_eq!(e.code, 7, "{conf}: {e}");
            assert!(e.msg.contains(field), "{conf}: {e} should name {field}");
        }
    }

    #[test]
    fn cni_args_ip_is_checked() {
        let conf = json!({"name": "n", "ipam": {"subnet": "10.0.0.0/24"}});
        assert_eq!(parse(conf.clone(), "IP=bad").unwrap_err().code, 4);
        assert_eq!(parse(conf.clone(), "FOO=1").unwrap_err().code, 4);
        assert_eq!(parse(conf, "IP=10.0.0.9").unwrap().requested.len(), 1);
    }
}
