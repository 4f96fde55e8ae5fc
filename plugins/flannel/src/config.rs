//! The flannel plugin's own keys (docs/architecture.md, flannel contracts, the flannel CNI plugin): `subnetFile`,
//! `dataDir`, `delegate`, `ipam`, `runtimeConfig`, next to the protocol keys `name`, `type`, `cniVersion` that skel
//! already checked. Every key is validated up front so a bad config is a code-7 error naming the key, never a surprise
//! in the delegate.

use crate::subnet_env;
use serde_json::{Map, Value};
use std::path::PathBuf;
use twill_cni::{Error, NetConf, Result};

/// The reference's scratch directory; DEL reads the delegate config saved there.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

#[derive(Debug, Clone)]
pub struct FlannelConf {
    /// The network name; the delegate gets the same one (host-local keys its store by it).
    pub name: String,
    /// `cniVersion` exactly as given, copied into the delegate (absent stays absent, as in the reference).
    pub cni_version: Option<Value>,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// `delegate`, validated: no `name`, no `ipam`, `type` a string when present.
    pub delegate: Map<String, Value>,
    /// `ipam`, the base of the delegate's IPAM config.
    pub ipam: Map<String, Value>,
    pub runtime_config: Option<Map<String, Value>>,
}

impl FlannelConf {
    pub fn from_netconf(conf: &NetConf) -> Result<FlannelConf> {
        let subnet_file = optional_string(conf, "subnetFile")?;
        let data_dir = optional_string(conf, "dataDir")?;
        let delegate = optional_object(conf, "delegate")?.unwrap_or_default();
        validate_delegate(&delegate)?;
        let ipam = optional_object(conf, "ipam")?.unwrap_or_default();
        validate_ipam(&ipam)?;
        let runtime_config = optional_object(conf, "runtimeConfig")?;
        Ok(FlannelConf {
            name: conf.name.as_str().to_string(),
            cni_version: conf.raw.get("cniVersion").cloned(),
            subnet_file: subnet_env::path_or_default(subnet_file.as_deref()),
            data_dir: PathBuf::from(data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
            delegate,
            ipam,
            runtime_config,
        })
    }

    /// The delegate's plugin type (`bridge` unless the delegate says otherwise).
    pub fn delegate_type(&self) -> &str {
        self.delegate
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("bridge")
    }
}

/// Only `dataDir`, for DEL: DEL must work from the saved config whatever else the current config says.
pub fn data_dir(conf: &NetConf) -> Result<PathBuf> {
    Ok(PathBuf::from(
        optional_string(conf, "dataDir")?
            .as_deref()
            .unwrap_or(DEFAULT_DATA_DIR),
    ))
}

fn optional_string(conf: &NetConf, key: &str) -> Result<Option<String>> {
    match conf.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Ok(None),
        Some(other) => Err(Error::invalid_config(format!(
            "{key} must be a path string, got {other}"
        ))),
    }
}

fn optional_object(conf: &NetConf, key: &str) -> Result<Option<Map<String, Value>>> {
    match conf.get(key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(Error::invalid_config(format!(
            "{key} must be an object, got {other}"
        ))),
    }
}

/// The reference's rules (docs/architecture.md, flannel contracts, the flannel CNI plugin): flannel owns the delegate's
/// `name` and `ipam`, and the delegate's `type` picks a binary, so it must be a string. A key that is present counts
/// even when null, as with the reference's `hasKey`.
fn validate_delegate(delegate: &Map<String, Value>) -> Result<()> {
    if let Some(t) = delegate.get("type") {
        match t {
            Value::String(s) if !s.is_empty() => {}
            other => {
                return Err(Error::invalid_config(format!(
                "delegate.type must be a non-empty string naming the delegate plugin, got {other}"
            )))
            }
        }
    }
    for key in ["name", "ipam"] {
        if delegate.contains_key(key) {
            return Err(Error::invalid_config(format!(
                "delegate.{key} must not be set: flannel sets it (put IPAM options in the top-level \
                 \"ipam\" object)"
            )));
        }
    }
    Ok(())
}

/// `ipam.type` must be a string if present and `ipam.routes` a list of routes with a `dst` CIDR, since both
/// end up in the delegate config flannel renders.
fn validate_ipam(ipam: &Map<String, Value>) -> Result<()> {
    if let Some(t) = ipam.get("type") {
        if matches!(t.as_str(), None | Some("")) {
            return Err(Error::invalid_config(format!(
                "ipam.type must be a non-empty string, got {t}"
            )));
        }
    }
    match ipam.get("routes") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(routes)) => {
            for (i, r) in routes.iter().enumerate() {
                let dst = r.get("dst").and_then(Value::as_str);
                if dst.and_then(|d| d.parse::<ipnet::IpNet>().ok()).is_none() {
                    return Err(Error::invalid_config(format!(
                        "ipam.routes[{i}].dst must be a CIDR, got {r}"
                    )));
                }
            }
            Ok(())
        }
        Some(other) => Err(Error::invalid_config(format!(
            "ipam.routes must be a list, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<FlannelConf> {
        FlannelConf::from_netconf(&NetConf::parse(v.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = conf(json!({"cniVersion":"0.3.1","name":"cbr0","type":"flannel"})).unwrap();
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        assert_eq!(c.delegate_type(), "bridge");
        assert!(c.delegate.is_empty() && c.ipam.is_empty() && c.runtime_config.is_none());
    }

    #[test]
    fn delegate_rules_are_code_7() {
        for (delegate, key) in [
            (json!({"name": "x"}), "delegate.name"),
            (json!({"ipam": {"type": "host-local"}}), "delegate.ipam"),
            (json!({"name": null}), "delegate.name"),
            (json!({"type": 5}), "delegate.type"),
            (json!({"type": ""}), "delegate.type"),
            (json!({"type": null}), "delegate.type"),
        ] {
            let e =
                conf(json!({"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":delegate}))
                    .unwrap_err();
            assert_eq!(e.code, 7, "{delegate}");
            assert!(e.msg.contains(key), "{delegate}: {}", e.msg);
        }
    }

    #[test]
    fn key_types_are_checked() {
        for (k, v) in [
            ("subnetFile", json!(5)),
            ("dataDir", json!(["x"])),
            ("delegate", json!("bridge")),
            ("ipam", json!(true)),
            ("runtimeConfig", json!(1)),
        ] {
            let mut c = json!({"cniVersion":"1.0.0","name":"n","type":"flannel"});
            c[k] = v;
            let e = conf(c).unwrap_err();
            assert_eq!(e.code, 7, "{k}");
            assert!(e.msg.contains(k), "{k}: {}", e.msg);
        }
        let e = conf(json!({"cniVersion":"1.0.0","name":"n","ipam":{"routes":[{"dst":"nope"}]}}))
            .unwrap_err();
        assert!(e.msg.contains("ipam.routes[0].dst"), "{}", e.msg);
        let e = conf(json!({"cniVersion":"1.0.0","name":"n","ipam":{"type":7}})).unwrap_err();
        assert!(e.msg.contains("ipam.type"), "{}", e.msg);
    }
}
