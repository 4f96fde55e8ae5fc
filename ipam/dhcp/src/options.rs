//! The DHCP options a lease asks for and carries: `ipam.request` (the parameter request list, option 55)
//! and `ipam.provide` (options sent to the server, e.g. a host name from `CNI_ARGS`), as the reference
//! prepares them. An option is named as dhcp-options(5) names it or by its decimal code.

use serde::{Deserialize, Serialize};
use twill_cni::{Error, Result};

/// Subnet mask (1) and router (3): requested unless an entry of `request` sets `skipDefault`.
pub const DEFAULT_REQUESTS: [u8; 2] = [3, 1];

/// Codes a configuration may not provide: pad, message type, parameter request list and end are the
/// client's own framing.
const RESERVED: [u8; 4] = [0, 53, 55, 255];

/// The options of one lease, ready for the wire; the daemon sends them in every DISCOVER, REQUEST and
/// renewal of that lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseOptions {
    /// Option 55's codes, in order, without duplicates. Empty: no option 55.
    pub request: Vec<u8>,
    /// Options sent with a value, in configuration order; a later one with the same code wins.
    pub provide: Vec<(u8, Vec<u8>)>,
}

/// `ipam.provide[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProvideOption {
    #[serde(default)]
    pub option: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, rename = "fromArg")]
    pub from_arg: String,
}

/// `ipam.request[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestOption {
    #[serde(default, rename = "skipDefault")]
    pub skip_default: bool,
    #[serde(default)]
    pub option: String,
}

/// The option code of a dhcp-options(5) name or a decimal code.
pub fn option_code(name: &str) -> Result<u8> {
    let code = match name {
        "dhcp-client-identifier" => 61,
        "subnet-mask" => 1,
        "routers" => 3,
        "host-name" => 12,
        "user-class" => 77,
        "vendor-class-identifier" => 60,
        other => other.parse::<u8>().map_err(|e| {
            Error::invalid_config(format!(
                "Can not parse option {name:?}: Can not parse option: {e}"
            ))
        })?,
    };
    Ok(code)
}

/// A value must fit one option (RFC 2132 §2: one length octet).
fn checked_value(code_name: &str, value: &str, from: Option<&str>) -> Result<Vec<u8>> {
    if value.len() > 255 {
        return Err(Error::invalid_config(match from {
            Some(arg) => format!("value too long for option {code_name:?} from CNI_ARGS {arg:?}"),
            None => format!("value too long for option {code_name:?}: {value:?}"),
        }));
    }
    Ok(value.as_bytes().to_vec())
}

/// The wire options of `provide` and `request`; `cni_args` are the `K=V` pairs `fromArg` reads.
pub fn prepare(
    provide: &[ProvideOption],
    request: &[RequestOption],
    cni_args: &[(&str, &str)],
) -> Result<LeaseOptions> {
    let mut out = LeaseOptions::default();
    for p in provide {
        let code = option_code(&p.option)?;
        if RESERVED.contains(&code) {
            return Err(Error::invalid_config(format!(
                "option {:?} cannot be provided: the DHCP client sets it",
                p.option
            )));
        }
        if !p.value.is_empty() {
            out.provide
                .push((code, checked_value(&p.option, &p.value, None)?));
        }
        if let Some((_, v)) = cni_args.iter().find(|(k, _)| *k == p.from_arg) {
            out.provide
                .push((code, checked_value(&p.option, v, Some(&p.from_arg))?));
        }
    }
    let mut skip_default = false;
    for r in request {
        skip_default |= r.skip_default;
        if r.option.is_empty() {
            continue;
        }
        let code = option_code(&r.option)?;
        if !out.request.contains(&code) {
            out.request.push(code);
        }
    }
    if !skip_default {
        for code in DEFAULT_REQUESTS {
            if !out.request.contains(&code) {
                out.request.push(code);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(option: &str, skip_default: bool) -> RequestOption {
        RequestOption {
            skip_default,
            option: option.into(),
        }
    }

    #[test]
    fn names_and_codes() {
        assert_eq!(option_code("routers").unwrap(), 3);
        assert_eq!(option_code("121").unwrap(), 121);
        assert_eq!(option_code("nope").unwrap_err().code, 7);
        assert_eq!(option_code("256").unwrap_err().code, 7);
    }

    #[test]
    fn defaults_follow_requested_options_unless_skipped() {
        let o = prepare(&[], &[req("121", false)], &[]).unwrap();
        assert_eq!(o.request, vec![121, 3, 1]);
        let o = prepare(&[], &[req("121", false), req("", true)], &[]).unwrap();
        assert_eq!(o.request, vec![121]);
        let o = prepare(&[], &[], &[]).unwrap();
        assert_eq!(o.request, vec![3, 1]);
    }

    #[test]
    fn provided_values_come_from_config_and_cni_args() {
        let p = [ProvideOption {
            option: "host-name".into(),
            value: "fixed".into(),
            from_arg: "K8S_POD_NAME".into(),
        }];
        let args = [("K8S_POD_NAME", "web-1")];
        let o = prepare(&p, &[], &args).unwrap();
        assert_eq!(
            o.provide,
            vec![(12, b"fixed".to_vec()), (12, b"web-1".to_vec())]
        );
        let long = "x".repeat(256);
        let args = [("K8S_POD_NAME", long.as_str())];
        assert_eq!(prepare(&p, &[], &args).unwrap_err().code, 7);
    }

    #[test]
    fn framing_options_cannot_be_provided() {
        let p = [ProvideOption {
            option: "53".into(),
            value: "x".into(),
            from_arg: String::new(),
        }];
        assert_eq!(prepare(&p, &[], &[]).unwrap_err().code, 7);
    }
}
