//! The tuning plugin's configuration: every key of the reference (`sysctl`, `mac`, `promisc`, `mtu`,
//! `txQLen`, `allmulti`, `dataDir`), with its overrides — `CNI_ARGS` `MAC`, then `runtimeConfig.mac`, then
//! `args.cni.*` (the reference's order: the args convention wins) — validated up front.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use twill_cni::{Error, Request, Result};
use twill_kernel::MacAddr;

/// Where the original link attributes are saved (the reference's default).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

/// The validated configuration of one request.
#[derive(Debug, Clone, Default)]
pub struct TuningConf {
    pub data_dir: PathBuf,
    /// In the order of the config (the reference's order is Go's random map order); keys unique.
    pub sysctls: Vec<(String, String)>,
    /// The MAC as configured (the result reports this text, as the reference) and parsed.
    pub mac: Option<(String, MacAddr)>,
    pub promisc: bool,
    pub mtu: Option<u32>,
    pub txqlen: Option<u32>,
    pub allmulti: Option<bool>,
}

/// `sysctl` as an ordered list; a key given twice is an error (the reference refuses it too).
#[derive(Debug, Default)]
struct Sysctls(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Sysctls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sysctls;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of sysctl keys to string values")
            }
            fn visit_unit<E>(self) -> std::result::Result<Sysctls, E> {
                Ok(Sysctls::default())
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Sysctls, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(
                            "duplicated sysctl keys are not allowed",
                        ));
                    }
                    out.push((k, v));
                }
                Ok(Sysctls(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Only the `sysctl` object, read from stdin itself: the parsed config has already merged duplicate keys.
#[derive(Deserialize)]
struct SysctlOnly {
    #[serde(default)]
    sysctl: Option<Sysctls>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default, rename = "txQLen")]
    txqlen: Option<i64>,
    #[serde(default)]
    allmulti: Option<bool>,
}

/// `args.cni`: the same keys, each overriding the config's when present.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgsCni {
    #[serde(default)]
    sysctl: Option<Sysctls>,
    #[serde(flatten)]
    rest: Raw,
}

fn non_negative(what: &str, v: Option<i64>) -> Result<Option<u32>> {
    match v {
        None | Some(0) => Ok(None),
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(Error::invalid_config(format!("invalid {what} {n}"))),
    }
}

impl TuningConf {
    pub fn load(req: &Request) -> Result<TuningConf> {
        let only: SysctlOnly = serde_json::from_slice(&req.stdin)
            .map_err(|e| Error::invalid_config(format!("sysctl: {e}")))?;
        let raw: Raw = req.config.plugin_config()?;
        // The reference decodes CNI_ARGS into {IgnoreUnknown, MAC}: any other key fails unless IgnoreUnknown.
        req.env.args.check_known(&["MAC"])?;
        let args: ArgsCni = match req.config.get("args").and_then(|a| a.get("cni")) {
            Some(v) => twill_cni::config::parse_value(v).map_err(|e| e.context("args.cni"))?,
            None => ArgsCni::default(),
        };

        let mut sysctls = only.sysctl.unwrap_or_default().0;
        for (k, v) in args.sysctl.unwrap_or_default().0 {
            match sysctls.iter_mut().find(|(seen, _)| *seen == k) {
                Some(entry) => entry.1 = v,
                None => sysctls.push((k, v)),
            }
        }
        let mut mac = raw.mac.filter(|m| !m.is_empty());
        if let Some(m) = req.env.args.get("MAC").filter(|m| !m.is_empty()) {
            mac = Some(m.to_string());
        }
        if let Some(m) = req
            .config
            .runtime_config("mac")
            .and_then(|v| v.as_str())
            .filter(|m| !m.is_empty())
        {
            mac = Some(m.to_string());
        }
        if let Some(m) = args.rest.mac {
            mac = Some(m).filter(|m| !m.is_empty());
        }
        let mac = match mac {
            Some(text) => {
                let parsed = text.parse::<MacAddr>().map_err(|e| {
                    Error::invalid_config(format!("invalid args {text} for MAC addr: {e}"))
                })?;
                Some((text, parsed))
            }
            None => None,
        };
        let data_dir = raw
            .data_dir
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
        Ok(TuningConf {
            data_dir: PathBuf::from(data_dir),
            sysctls,
            mac,
            promisc: args.rest.promisc.or(raw.promisc).unwrap_or(false),
            mtu: non_negative("mtu", args.rest.mtu.or(raw.mtu))?,
            txqlen: match args.rest.txqlen.or(raw.txqlen) {
                None => None,
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
                Some(n) => return Err(Error::invalid_config(format!("invalid txQLen {n}"))),
            },
            allmulti: args.rest.allmulti.or(raw.allmulti),
        })
    }

    /// Whether ADD changes link attributes, whose original values it then saves for DEL.
    pub fn changes_link(&self) -> bool {
        self.mac.is_some()
            || self.mtu.is_some()
            || self.promisc
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_cni::Command;

    fn req(config: &str, cni_args: &str) -> Request {
        twill_cni::testing::request(Command::Add, config, cni_args)
    }

    fn load(config: &str) -> Result<TuningConf> {
        TuningConf::load(&req(config, ""))
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = load(r#"{"cniVersion":"1.0.0","name":"n","type":"tuning"}"#).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/run/cni/tuning"));
        assert!(c.sysctls.is_empty() && c.mac.is_none() && !c.promisc);
        assert!(c.mtu.is_none() && c.txqlen.is_none() && c.allmulti.is_none());
        assert!(!c.changes_link());
    }

    #[test]
    fn sysctls_keep_their_order_and_args_override() {
        let c = load(
            r#"{"name":"n","sysctl":{"net.b":"1","net.a":"2"},
                "args":{"cni":{"sysctl":{"net.a":"3","net.c":"4"},"mtu":1400,"promisc":true}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.sysctls,
            vec![
                ("net.b".to_string(), "1".to_string()),
                ("net.a".to_string(), "3".to_string()),
                ("net.c".to_string(), "4".to_string())
            ]
        );
        assert_eq!(c.mtu, Some(1400));
        assert!(c.promisc && c.changes_link());
    }

    #[test]
    fn duplicated_sysctl_keys_are_refused() {
        let e = load(r#"{"name":"n","sysctl":{"net.a":"1","net.a":"2"}}"#).unwrap_err();
        assert!(e.msg.contains("duplicated sysctl keys"), "{e}");
    }

    #[test]
    fn mac_precedence_args_then_runtime_config_then_cni_args() {
        let all = r#"{"name":"n","mac":"02:00:00:00:00:04","runtimeConfig":{"mac":"02:00:00:00:00:01"},"args":{"cni":{"mac":"02:00:00:00:00:02"}}}"#;
        let c = TuningConf::load(&req(all, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:02");
        let rc =
            r#"{"name":"n","mac":"02:00:00:00:00:04","runtimeConfig":{"mac":"02:00:00:00:00:01"}}"#;
        let c = TuningConf::load(&req(rc, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:01");
        let c = TuningConf::load(&req(
            r#"{"name":"n","mac":"02:00:00:00:00:04"}"#,
            "MAC=02:00:00:00:00:03",
        ))
        .unwrap();
        assert_eq!(c.mac.unwrap().0, "02:00:00:00:00:03");
    }

    #[test]
    fn bad_values_are_config_errors() {
        for bad in [
            r#"{"name":"n","mtu":-5}"#,
            r#"{"name":"n","txQLen":-1}"#,
            r#"{"name":"n","mac":"zz"}"#,
            r#"{"name":"n","promisc":"yes"}"#,
            r#"{"name":"n","sysctl":{"net.a":1}}"#,
            r#"{"name":"n","sysctl":["net.a"]}"#,
        ] {
            assert_eq!(load(bad).unwrap_err().code, 7, "{bad}");
        }
        assert_eq!(
            TuningConf::load(&req(r#"{"name":"n"}"#, "K8S_POD_NAME=p"))
                .unwrap_err()
                .code,
            4
        );
    }
}
