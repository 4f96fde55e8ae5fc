//! The bridge plugin's configuration (docs/cni-spec-notes.md §10.1): every key of the reference with its default and
//! meaning, validated up front (docs/cni-spec-notes.md §10.2 step 1) so a bad config fails before anything is touched.

use serde::Deserialize;
use std::collections::BTreeSet;
use twill_cni::{Dns, Error, Request, Result};
use twill_kernel::MacAddr;

/// The reference's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Which firewall implements `ipMasq`: twill-firewall's own choice type (nftables unless `ipMasqBackend`
/// says `iptables`).
pub use twill_firewall::masquerade::Backend as MasqBackend;

/// The validated configuration of one request.
#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub masq_backend: MasqBackend,
    /// `None` = kernel default (the reference's 0).
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    /// Access VLAN (PVID + untagged) of the host port; `None` = no VLAN.
    pub vlan: Option<u16>,
    /// Tagged VLANs of the host port, sorted and deduplicated.
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enable_dad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// `ipam.type`; `None` is L2-only mode.
    pub ipam_type: Option<String>,
    /// The `dns` key when any of its fields is set: it replaces IPAM's DNS in the result.
    pub dns: Option<Dns>,
    /// Container MAC: runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC.
    pub mac: Option<MacAddr>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Raw {
    /// Absent or empty: `cni0`, as the reference.
    bridge: Option<String>,
    is_gateway: bool,
    is_default_gateway: bool,
    force_address: bool,
    ip_masq: bool,
    /// `iptables` or `nftables`; absent or empty: nftables.
    ip_masq_backend: Option<String>,
    /// 0: the kernel default. Read as i64 so that a negative value gets our own clear error.
    mtu: i64,
    hairpin_mode: bool,
    promisc_mode: bool,
    /// 0: no VLAN.
    vlan: i64,
    vlan_trunk: Option<Vec<VlanTrunk>>,
    preserve_default_vlan: bool,
    #[serde(rename = "macspoofchk")]
    macspoofchk: bool,
    #[serde(rename = "enabledad")]
    enable_dad: bool,
    disable_container_interface: bool,
    port_isolation: bool,
    dns: Option<Dns>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct VlanTrunk {
    #[serde(default, rename = "minID")]
    min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    max_id: Option<i64>,
    #[serde(default)]
    id: Option<i64>,
}

fn valid_vid(v: i64) -> bool {
    (1..=4094).contains(&v)
}

/// The reference's `collectVlanTrunk`: ranges and single ids, each 1..=4094, merged and sorted.
fn collect_trunk(items: &[VlanTrunk]) -> Result<Vec<u16>> {
    let mut vids = BTreeSet::new();
    for item in items {
        match (item.min_id, item.max_id) {
            (Some(min), Some(max)) => {
                if !valid_vid(min) {
                    return Err(Error::invalid_config("incorrect trunk minID parameter"));
                }
                if !valid_vid(max) {
                    return Err(Error::invalid_config("incorrect trunk maxID parameter"));
                }
                if max < min {
                    return Err(Error::invalid_config(
                        "minID is greater than maxID in trunk parameter",
                    ));
                }
                vids.extend(min..=max);
            }
            (None, Some(_)) => {
                return Err(Error::invalid_config(
                    "minID and maxID should be configured simultaneously, minID is missing",
                ))
            }
            (Some(_), None) => {
                return Err(Error::invalid_config(
                    "minID and maxID should be configured simultaneously, maxID is missing",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = item.id {
            if !valid_vid(id) {
                return Err(Error::invalid_config("incorrect trunk id parameter"));
            }
            vids.insert(id);
        }
    }
    // Every id was checked to be in 1..=4094 above.
    Ok(vids.into_iter().map(|v| v as u16).collect())
}

/// A bridge name goes into netlink requests and sysctl paths: it must be a valid interface name.
fn check_ifname(what: &str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_IFNAME
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if bad {
        return Err(Error::invalid_config(format!(
            "{what} {name:?} is not a valid interface name (1-{MAX_IFNAME} characters, no '/', ':' or whitespace)"
        )));
    }
    Ok(())
}

fn parse_mac(source: &str, s: &str) -> Result<MacAddr> {
    s.parse::<MacAddr>()
        .map_err(|e| Error::invalid_config(format!("{source}: {e}")))
}

impl BridgeConf {
    /// Parse and validate the request's config (and `CNI_ARGS`, which the reference parses on every verb).
    pub fn load(req: &Request) -> Result<BridgeConf> {
        let raw: Raw = req.config.plugin_config()?;
        // The reference decodes CNI_ARGS into {IgnoreUnknown, MAC}: any other key fails unless IgnoreUnknown.
        req.env.args.check_known(&["MAC"])?;

        let bridge = raw
            .bridge
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        check_ifname("bridge", &bridge)?;
        if !(0..=4094).contains(&raw.vlan) {
            return Err(Error::invalid_config(format!(
                "invalid VLAN ID {} (must be between 0 and 4094)",
                raw.vlan
            )));
        }
        let vlan = (raw.vlan != 0).then_some(raw.vlan as u16);
        let vlan_trunk = match &raw.vlan_trunk {
            Some(items) => collect_trunk(items)?,
            None => Vec::new(),
        };
        if vlan.is_some() && !vlan_trunk.is_empty() {
            return Err(Error::invalid_config(
                "cannot set vlan and vlanTrunk at the same time",
            ));
        }
        if let Some(v) = vlan {
            // The VLAN gateway interface is named "<bridge>.<vlan>".
            check_ifname("VLAN gateway interface", &format!("{bridge}.{v}"))?;
        }
        if !(0..=i64::from(u32::MAX)).contains(&raw.mtu) {
            return Err(Error::invalid_config(format!("invalid mtu {}", raw.mtu)));
        }
        let mtu = (raw.mtu > 0).then_some(raw.mtu as u32);
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::invalid_config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        let ipam_type = req.config.ipam_type().map(str::to_string);
        if raw.disable_container_interface && ipam_type.is_some() {
            return Err(Error::invalid_config(
                "cannot use IPAM when disableContainerInterface flag is set",
            ));
        }
        // An empty string is "unset", as the reference reads it.
        let masq_backend =
            MasqBackend::from_config(raw.ip_masq_backend.as_deref().filter(|b| !b.is_empty()))
                .map_err(|e| Error::invalid_config(e.to_string()))?;
        let dns = raw.dns.filter(|d| !d.is_empty());

        let mut mac = None;
        if let Some(m) = req.env.args.get("MAC").filter(|m| !m.is_empty()) {
            mac = Some(parse_mac("CNI_ARGS MAC", m)?);
        }
        if let Some(m) = req
            .config
            .args_cni("mac")
            .and_then(|v| v.as_str())
            .filter(|m| !m.is_empty())
        {
            mac = Some(parse_mac("args.cni.mac", m)?);
        }
        if let Some(m) = req
            .config
            .runtime_config("mac")
            .and_then(|v| v.as_str())
            .filter(|m| !m.is_empty())
        {
            mac = Some(parse_mac("runtimeConfig.mac", m)?);
        }

        Ok(BridgeConf {
            bridge,
            // isDefaultGateway implies isGateway (docs/cni-spec-notes.md §10.1).
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            masq_backend,
            mtu,
            hairpin: raw.hairpin_mode,
            promisc: raw.promisc_mode,
            vlan,
            vlan_trunk,
            preserve_default_vlan: raw.preserve_default_vlan,
            macspoofchk: raw.macspoofchk,
            enable_dad: raw.enable_dad,
            disable_container_interface: raw.disable_container_interface,
            port_isolation: raw.port_isolation,
            ipam_type,
            dns,
            mac,
        })
    }

    /// VLAN filtering is needed on a bridge we create when any VLAN is configured.
    pub fn vlan_filtering(&self) -> bool {
        self.vlan.is_some() || !self.vlan_trunk.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_cni::Command;

    fn req(config: &str, cni_args: &str) -> Request {
        twill_cni::testing::request(Command::Add, config, cni_args)
    }

    fn load(config: &str) -> Result<BridgeConf> {
        BridgeConf::load(&req(config, ""))
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = load(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && !c.hairpin && !c.preserve_default_vlan);
        assert_eq!(c.mtu, None);
        assert_eq!(c.vlan, None);
        assert_eq!(c.ipam_type, None);
        assert_eq!(c.masq_backend, MasqBackend::Nftables);
    }

    #[test]
    fn default_gateway_implies_gateway() {
        let c =
            load(r#"{"name":"n","isDefaultGateway":true,"ipam":{"type":"host-local"}}"#).unwrap();
        assert!(c.is_gateway && c.is_default_gateway);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
    }

    #[test]
    fn invalid_combinations_are_config_errors() {
        for bad in [
            r#"{"name":"n","vlan":4095}"#,
            r#"{"name":"n","vlan":-1}"#,
            r#"{"name":"n","vlan":5,"vlanTrunk":[{"id":6}]}"#,
            r#"{"name":"n","vlanTrunk":[{"minID":5}]}"#,
            r#"{"name":"n","vlanTrunk":[{"minID":7,"maxID":5}]}"#,
            r#"{"name":"n","vlanTrunk":[{"id":0}]}"#,
            r#"{"name":"n","hairpinMode":true,"promiscMode":true}"#,
            r#"{"name":"n","disableContainerInterface":true,"ipam":{"type":"host-local"}}"#,
            r#"{"name":"n","bridge":"this-name-is-too-long"}"#,
            r#"{"name":"n","bridge":"a/b"}"#,
            r#"{"name":"n","ipMasqBackend":"pf"}"#,
            r#"{"name":"n","mtu":"big"}"#,
            r#"{"name":"n","runtimeConfig":{"mac":"zz"}}"#,
        ] {
            assert_eq!(load(bad).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn trunk_ranges_merge_and_sort() {
        let c =
            load(r#"{"name":"n","vlanTrunk":[{"id":9},{"minID":3,"maxID":5},{"id":4}]}"#).unwrap();
        assert_eq!(c.vlan_trunk, vec![3, 4, 5, 9]);
        assert!(c.vlan_filtering());
    }

    #[test]
    fn mac_precedence_runtime_config_then_args_then_cni_args() {
        let all = r#"{"name":"n","runtimeConfig":{"mac":"02:00:00:00:00:01"},"args":{"cni":{"mac":"02:00:00:00:00:02"}}}"#;
        let c = BridgeConf::load(&req(all, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:01");
        let args = r#"{"name":"n","args":{"cni":{"mac":"02:00:00:00:00:02"}}}"#;
        let c = BridgeConf::load(&req(args, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:02");
        let c = BridgeConf::load(&req(r#"{"name":"n"}"#, "MAC=02:00:00:00:00:03")).unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:03");
    }

    #[test]
    fn unknown_cni_args_fail_unless_ignored() {
        assert_eq!(
            BridgeConf::load(&req(r#"{"name":"n"}"#, "K8S_POD_NAME=p"))
                .unwrap_err()
                .code,
            4
        );
        assert!(
            BridgeConf::load(&req(r#"{"name":"n"}"#, "IgnoreUnknown=1;K8S_POD_NAME=p")).is_ok()
        );
    }

    #[test]
    fn dns_overrides_only_when_set() {
        assert!(load(r#"{"name":"n","dns":{}}"#).unwrap().dns.is_none());
        let c = load(r#"{"name":"n","dns":{"nameservers":["10.0.0.10"]}}"#).unwrap();
        assert_eq!(c.dns.unwrap().nameservers, vec!["10.0.0.10"]);
    }
}
