//! The plugin's keys: `ingressRate`, `ingressBurst`, `egressRate`, `egressBurst` (bits per second and
//! bits) at the top level of the config, or the runtime's `runtimeConfig.bandwidth` (the Kubernetes
//! pod annotations path) when the top level has none of them.

use serde::Deserialize;
use serde_json::{Map, Value};
use twill_cni::{Error, NetConf, Result};

/// The four keys the reference reads at the top level.
const KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// One bandwidth entry: rates in bits per second, bursts in bits; 0 means "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

/// One direction's limit, both values non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rate_bits: u64,
    pub burst_bits: u64,
}

impl Limits {
    pub fn is_zero(&self) -> bool {
        *self == Limits::default()
    }

    /// Traffic towards the container (shaped on the host veth's egress).
    pub fn ingress(&self) -> Option<Shape> {
        shape(self.ingress_rate, self.ingress_burst)
    }

    /// Traffic from the container (redirected to an ifb and shaped there).
    pub fn egress(&self) -> Option<Shape> {
        shape(self.egress_rate, self.egress_burst)
    }
}

fn shape(rate_bits: u64, burst_bits: u64) -> Option<Shape> {
    (rate_bits > 0 && burst_bits > 0).then_some(Shape {
        rate_bits,
        burst_bits,
    })
}

/// `map[name]`, else the first key equal to `name` ignoring ASCII case: the reference decodes with
/// Go's encoding/json, which matches keys that way, and configs in the wild rely on it (the reference
/// project's own integration tests spell the capability `bandWidth`).
fn get_fold<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name)
        .or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// An entry object with its keys matched as Go matches them.
fn entry(v: &Value) -> Result<Limits> {
    let Value::Object(m) = v else {
        return twill_cni::config::parse_value::<Limits>(v);
    };
    let mut folded = Map::new();
    for k in KEYS {
        if let Some(val) = get_fold(m, k) {
            folded.insert(k.to_string(), val.clone());
        }
    }
    twill_cni::config::parse_value::<Limits>(&Value::Object(folded))
}

/// The limits this request asks for: the top-level entry when any of its keys is present (as the
/// reference's embedded struct decodes), else `runtimeConfig.bandwidth`; validated.
pub fn limits(conf: &NetConf) -> Result<Option<Limits>> {
    let top_level = KEYS
        .iter()
        .any(|k| conf.raw.keys().any(|have| have.eq_ignore_ascii_case(k)));
    let limits = if top_level {
        Some(entry(&Value::Object(conf.raw.clone()))?)
    } else {
        let rc = get_fold(&conf.raw, "runtimeConfig").and_then(Value::as_object);
        match rc.and_then(|rc| get_fold(rc, "bandwidth")) {
            Some(v) => Some(entry(v).map_err(|e| e.context("runtimeConfig.bandwidth"))?),
            None => None,
        }
    };
    if let Some(l) = &limits {
        validate("ingress", l.ingress_rate, l.ingress_burst)?;
        validate("egress", l.egress_rate, l.egress_burst)?;
    }
    Ok(limits)
}

fn validate(dir: &str, rate: u64, burst: u64) -> Result<()> {
    if burst == 0 && rate != 0 {
        return Err(Error::invalid_config(format!(
            "if rate is set, burst must also be set ({dir}Rate {rate}, {dir}Burst 0)"
        )));
    }
    if rate == 0 && burst != 0 {
        return Err(Error::invalid_config(format!(
            "if burst is set, rate must also be set ({dir}Burst {burst}, {dir}Rate 0)"
        )));
    }
    if burst / 8 >= u64::from(u32::MAX) {
        return Err(Error::invalid_config(format!(
            "burst cannot be more than 4GB ({dir}Burst {burst} bits)"
        )));
    }
    // Below one byte per second the kernel's rate is zero and the bucket arithmetic divides by it.
    if rate != 0 && rate < 8 {
        return Err(Error::invalid_config(format!(
            "{dir}Rate {rate} is below the smallest rate the kernel can shape (8 bits per second)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> NetConf {
        let mut base = json!({"cniVersion": "1.0.0", "name": "n", "type": "bandwidth"});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        NetConf::parse(base.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn top_level_keys_win_over_runtime_config() {
        let c = conf(json!({"ingressRate": 8000, "ingressBurst": 800,
            "runtimeConfig": {"bandwidth": {"egressRate": 16000, "egressBurst": 1600}}}));
        let l = limits(&c).unwrap().unwrap();
        assert_eq!(l.ingress_rate, 8000);
        assert_eq!(l.egress_rate, 0);
    }

    #[test]
    fn runtime_config_is_used_without_top_level_keys() {
        let c = conf(
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 16000, "egressBurst": 1600}}}),
        );
        assert_eq!(limits(&c).unwrap().unwrap().egress_rate, 16000);
    }

    #[test]
    fn go_style_runtime_config_keys_are_read() {
        let c = conf(
            json!({"runtimeConfig": {"bandwidth": {"IngressRate": 16000, "IngressBurst": 1600}}}),
        );
        assert_eq!(limits(&c).unwrap().unwrap().ingress_rate, 16000);
    }

    #[test]
    fn rate_without_burst_is_refused() {
        for bad in [
            json!({"ingressRate": 8000}),
            json!({"egressBurst": 8000}),
            json!({"egressRate": 8000, "egressBurst": 40_000_000_000u64}),
            json!({"ingressRate": 4, "ingressBurst": 800}),
            json!({"ingressRate": -1, "ingressBurst": 800}),
            json!({"runtimeConfig": {"bandwidth": {"ingressRate": "fast"}}}),
        ] {
            let e = limits(&conf(bad.clone())).unwrap_err();
            assert_eq!(e.code, 7, "{bad}: {e}");
        }
    }

    #[test]
    fn keys_match_ignoring_case_as_go_decodes_them() {
        let c = conf(
            json!({"runtimeConfig": {"bandWidth": {"ingressRate": 800, "INGRESSBURST": 200}}}),
        );
        let l = limits(&c).unwrap().unwrap();
        assert_eq!((l.ingress_rate, l.ingress_burst), (800, 200));
        let c = conf(json!({"IngressRate": 8000, "ingressBurst": 800}));
        assert_eq!(limits(&c).unwrap().unwrap().ingress_rate, 8000);
    }

    #[test]
    fn nothing_asked_is_none() {
        assert_eq!(limits(&conf(json!({}))).unwrap(), None);
    }
}
