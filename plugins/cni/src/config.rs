//! The request configuration on stdin (docs/cni-spec-notes.md §3.2): the protocol keys every plugin reads, and typed
//! access to the plugin's own keys. Unknown keys are tolerated everywhere (the reference plugins ignore them).

use crate::error::{Error, Result};
use crate::names::{ContainerId, IfName, NetworkName};
use crate::result::CniResult;
use crate::version::Version;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: NetworkName,
    /// The plugin's `type`; may be empty in a request to an IPAM delegate built by hand.
    pub plugin_type: String,
    /// The whole object as received, for plugin-specific keys and for delegation.
    pub raw: Map<String, Value>,
}

/// One entry of `cni.dev/valid-attachments` (GC, spec 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parse stdin: not JSON or not an object is 6; a bad `cniVersion` is 6 or 1; a missing or invalid `name`
    /// is 7 (the checks skel makes on every verb but VERSION).
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::decoding(format!("error unmarshalling network config: {e}")))?;
        let Value::Object(mut raw) = value else {
            return Err(Error::decoding(
                "error unmarshalling network config: not a JSON object",
            ));
        };
        if let Some(Value::Object(rc)) = raw.get_mut("runtimeConfig") {
            normalize_capability_keys(rc);
        }
        let version = match raw.get("cniVersion") {
            None | Some(Value::Null) => Version::V0_1_0,
            Some(Value::String(s)) if s.is_empty() => Version::V0_1_0,
            Some(Value::String(s)) => Version::parse(s)?,
            Some(other) => {
                return Err(Error::decoding(format!(
                    "cniVersion must be a string, got {other}"
                )))
            }
        };
        let name = match raw.get("name") {
            None | Some(Value::Null) => return Err(Error::invalid_config("missing network name")),
            Some(Value::String(s)) => NetworkName::parse(s)?,
            Some(other) => {
                return Err(Error::invalid_config(format!(
                    "network name must be a string, got {other}"
                )))
            }
        };
        let plugin_type = raw
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(NetConf {
            version,
            name,
            plugin_type,
            raw,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// Deserialize the plugin's own view of the config. Errors are code 7 and name the offending key path
    /// ("ipam.ranges[0][0].subnet: invalid IP address syntax").
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T> {
        parse_value(&Value::Object(self.raw.clone()))
    }

    /// The IPAM delegate's type; `None` for L2-only mode (`ipam` absent, `{}` or without `type`).
    pub fn ipam_type(&self) -> Option<&str> {
        self.get("ipam")?
            .get("type")?
            .as_str()
            .filter(|t| !t.is_empty())
    }

    /// `runtimeConfig.<key>` (capability args inserted by the runtime).
    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        self.get("runtimeConfig")?.get(key).filter(|v| !v.is_null())
    }

    /// `args.cni.<key>` (args convention).
    pub fn args_cni(&self, key: &str) -> Option<&Value> {
        self.get("args")?
            .get("cni")?
            .get(key)
            .filter(|v| !v.is_null())
    }

    /// The previous result of the chain, up-converted; a `prevResult` without `cniVersion` takes the config's.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match self.get("prevResult") {
            None => Ok(None),
            Some(v) => CniResult::from_json(v, self.version)
                .map(Some)
                .map_err(|e| e.context("prevResult")),
        }
    }

    /// The attachments GC must keep. `cni.dev/valid-attachments` is the spec's key; libcni also sends the older
    /// `cni.dev/attachments`, read as a fallback. `None` when neither is present: an absent list must never be
    /// mistaken for an empty one, which means "release everything".
    pub fn valid_attachments(&self) -> Result<Option<Vec<Attachment>>> {
        let Some(list) = self
            .get("cni.dev/valid-attachments")
            .or_else(|| self.get("cni.dev/attachments"))
        else {
            return Ok(None);
        };
        let items = list
            .as_array()
            .ok_or_else(|| Error::invalid_config("cni.dev/valid-attachments must be a list"))?;
        items
            .iter()
            .map(|a| {
                let field = |k: &str| {
                    a.get(k)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::invalid_config(format!(
                                "cni.dev/valid-attachments: entry without {k}: {a}"
                            ))
                        })
                };
                Ok(Attachment {
                    container_id: field("containerID")?,
                    ifname: field("ifname")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

impl Attachment {
    pub fn is(&self, id: &ContainerId, ifname: &IfName) -> bool {
        self.container_id == id.as_str() && self.ifname == ifname.as_str()
    }
}

/// Capabilities whose entries are structs in the runtime's Go code (docs/cni-spec-notes.md §3.3; the CNI
/// CONVENTIONS.md, capabilities).
const STRUCTURED_CAPABILITIES: &[&str] = &["portMappings", "ipRanges", "bandwidth", "dns"];

/// containerd's go-cni serialises capability structs without JSON tags (`{"HostPort":80,"ContainerPort":80,
/// "Protocol":"tcp","HostIP":""}`, `{"Subnet":..,"RangeStart":..}`), and the reference plugins accept that
/// because Go's JSON decoding matches keys case-insensitively. The CNI names are the Go field names with a
/// lower-case first letter, so that is the mapping; only the structured capabilities are touched, never opaque
/// maps such as pod annotations.
fn normalize_capability_keys(rc: &mut Map<String, Value>) {
    fn lower_first(k: &str) -> String {
        let mut c = k.chars();
        match c.next() {
            Some(f) => f.to_lowercase().chain(c).collect(),
            None => String::new(),
        }
    }
    fn walk(v: &mut Value) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(m) => {
                let entries = std::mem::take(m);
                for (k, mut val) in entries {
                    walk(&mut val);
                    let key = lower_first(&k);
                    // An explicit camelCase key wins over its Go-style twin.
                    if k == key || !m.contains_key(&key) {
                        m.insert(key, val);
                    }
                }
            }
            _ => {}
        }
    }
    for cap in STRUCTURED_CAPABILITIES {
        if let Some(v) = rc.get_mut(*cap) {
            walk(v);
        }
    }
}

/// Deserialize any config fragment with code-7 errors that name the key path.
pub fn parse_value<T: DeserializeOwned>(v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::invalid_config(format!("invalid network config: {inner}"))
        } else {
            Error::invalid_config(format!("invalid network config: {path}: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = NetConf::parse(
            br#"{"name":"n","type":"bridge","whatever":{"x":1},"capabilities":{"ips":true}}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V0_1_0);
        assert_eq!(c.plugin_type, "bridge");
        assert_eq!(c.ipam_type(), None);
    }

    #[test]
    fn decoding_and_validation_codes() {
        assert_eq!(NetConf::parse(b"not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a/b"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"7.0.0","name":"a"}"#)
                .unwrap_err()
                .code,
            1
        );
    }

    #[test]
    fn go_style_capability_keys_from_containerd_are_accepted() {
        let c = NetConf::parse(
            br#"{"name":"n","runtimeConfig":{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
                "ipRanges":[[{"Subnet":"10.1.0.0/24","RangeStart":"10.1.0.10"}]],
                "io.kubernetes.cri.pod-annotations":{"Foo":"bar"}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.runtime_config("portMappings").unwrap(),
            &serde_json::json!([{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}])
        );
        assert_eq!(
            c.runtime_config("ipRanges").unwrap()[0][0]["rangeStart"],
            "10.1.0.10"
        );
        assert_eq!(
            c.runtime_config("io.kubernetes.cri.pod-annotations")
                .unwrap()["Foo"],
            "bar"
        );
    }

    #[test]
    fn gc_list_absent_differs_from_empty() {
        let absent = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert_eq!(absent.valid_attachments().unwrap(), None);
        let empty =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[]}"#)
                .unwrap();
        assert_eq!(empty.valid_attachments().unwrap(), Some(vec![]));
        let legacy = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"c","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(
            legacy.valid_attachments().unwrap().unwrap()[0].container_id,
            "c"
        );
    }

    #[test]
    fn plugin_config_errors_name_the_key() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            #[serde(default)]
            mtu: u32,
        }
        let c = NetConf::parse(br#"{"name":"n","mtu":"big"}"#).unwrap();
        let e = c.plugin_config::<P>().unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("mtu"), "{}", e.msg);
    }
}
