//! The iptables backend (`"backend": "iptables"`), shaped like the reference's (docs/cni-spec-notes.md §12 portmap):
//! chain `TWILL-HOSTPORTS` entered from PREROUTING and OUTPUT for `--dst-type LOCAL`, and `TWILL-HOSTPORTS-MASQ`
//! prepended to POSTROUTING. Per-attachment rules carry their owner in a comment (see `owner`). One `iptables-save` to
//! read and one `iptables-restore --noflush` to change, so each change is one atomic commit.

use crate::config::MarkWith;
use crate::owner::Tag;
use crate::rules::{Backend, Family, Listed, Locator, MappingRules, Plan};
use std::net::IpAddr;
use twill_cni::{Error, Result};
use twill_firewall::iptables::{Iptables as Tool, RestoreBatch};
use twill_firewall::nft::IpFamily;

const DNAT_CHAIN: &str = "TWILL-HOSTPORTS";
const MASQ_CHAIN: &str = "TWILL-HOSTPORTS-MASQ";
/// Comment on the shared rules (jumps, masquerade): not an owner tag, so never deleted per attachment.
const BASE_COMMENT: &str = "twill-portmap";

#[derive(Default)]
pub struct Iptables {
    /// Per family: the `nat` table as last saved.
    saved: [Option<Saved>; 2],
}

#[derive(Debug, Default, Clone)]
struct Saved {
    chains: Vec<String>,
    /// Every `-A` line, verbatim.
    rules: Vec<String>,
}

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn tool(f: Family) -> Tool {
    Tool::new(match f {
        Family::V4 => IpFamily::V4,
        Family::V6 => IpFamily::V6,
    })
}

fn err(e: twill_firewall::Error) -> Error {
    Error::failed(format!("iptables: {e}"))
}

fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut any = false;
    for c in line.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
            any = true;
        } else if c.is_whitespace() && !in_quotes {
            if any || !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                any = false;
            }
        } else {
            cur.push(c);
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn comment_of(line: &str) -> Option<String> {
    let args = split_args(line);
    let at = args.iter().position(|a| a == "--comment")?;
    args.get(at + 1).cloned()
}

fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:!,=[]*".contains(c))
    {
        arg.to_string()
    } else {
        format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn dnat_target(r: &MappingRules) -> String {
    match r.container_ip {
        IpAddr::V4(a) => format!("{a}:{}", r.mapping.container_port),
        IpAddr::V6(a) => format!("[{a}]:{}", r.mapping.container_port),
    }
}

fn mask(bit: u32) -> String {
    format!("0x{:x}/0x{:x}", 1u32 << bit, 1u32 << bit)
}

fn masq_comment(bit: u32) -> String {
    format!("{BASE_COMMENT} masquerade mark bit {bit}")
}

/// The `-A` lines of one mapping.
fn mapping_lines(plan: &Plan, r: &MappingRules) -> Vec<String> {
    let proto = r.mapping.protocol.as_str();
    let mut matcher = vec![
        "-p".to_string(),
        proto.to_string(),
        "-m".into(),
        proto.to_string(),
        "--dport".into(),
        r.mapping.host_port.to_string(),
    ];
    if let Some(h) = r.mapping.host_ip {
        matcher.extend(["-d".to_string(), host_net(h)]);
    }
    let line = |extra: &[String], tag: &Tag, target: &[String]| {
        let mut args = vec!["-A".to_string(), DNAT_CHAIN.to_string()];
        args.extend(matcher.iter().cloned());
        args.extend(extra.iter().cloned());
        args.extend([
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            tag.comment(),
        ]);
        args.extend(target.iter().cloned());
        args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    };
    let mark_target: Vec<String> = match &plan.mark {
        MarkWith::Bit(b) => vec!["-j".into(), "MARK".into(), "--set-xmark".into(), mask(*b)],
        MarkWith::ExternalChain(c) => vec!["-j".into(), c.clone()],
    };
    let mut out: Vec<String> = r
        .mark_sources
        .iter()
        .map(|src| {
            let extra: Vec<String> = match src {
                Some(s) => vec!["-s".into(), host_net(*s)],
                None => vec![],
            };
            line(&extra, &r.mark_tag, &mark_target)
        })
        .collect();
    // The conditions go on the DNAT rule only: they typically match sources (`! -s ...`), and iptables
    // allows one `-s` per rule, which the hairpin/localhost mark rules already use. A mark without the
    // DNAT is harmless: only DNAT'd packets are routed back out to be masqueraded.
    out.push(line(
        &plan.conditions,
        &r.dnat_tag,
        &[
            "-j".into(),
            "DNAT".into(),
            "--to-destination".into(),
            dnat_target(r),
        ],
    ));
    out
}

impl Iptables {
    fn save(&mut self, family: Family) -> Result<&Saved> {
        let lines = tool(family).list("nat", None).map_err(err)?;
        let mut saved = Saved::default();
        for line in lines {
            if let Some(chain) = line.strip_prefix("-N ") {
                saved.chains.push(chain.trim().to_string());
            } else if line.starts_with("-A ") {
                saved.rules.push(line);
            }
        }
        self.saved[idx(family)] = Some(saved);
        Ok(self.saved[idx(family)].get_or_insert_with(Saved::default))
    }
}

impl Backend for Iptables {
    fn list(&mut self, family: Family) -> Result<Vec<Listed>> {
        let saved = self.save(family)?;
        Ok(saved
            .rules
            .iter()
            .filter(|l| l.starts_with(&format!("-A {DNAT_CHAIN} ")))
            .filter_map(|l| {
                let tag = Tag::parse(&comment_of(l)?)?;
                Some(Listed {
                    tag,
                    locator: Locator::Iptables { line: l.clone() },
                })
            })
            .collect())
    }

    fn apply(
        &mut self,
        family: Family,
        delete: &[Listed],
        add: Option<&Plan>,
        teardown: bool,
    ) -> Result<()> {
        let saved = match &self.saved[idx(family)] {
            Some(s) => s.clone(),
            None => self.save(family)?.clone(),
        };
        let has_chain = |c: &str| saved.chains.iter().any(|x| x == c);
        let base_lines: Vec<&String> = saved
            .rules
            .iter()
            .filter(|l| comment_of(l).is_some_and(|c| c.starts_with(BASE_COMMENT)))
            .collect();
        let mut batch = RestoreBatch::new();
        for l in delete {
            if let Locator::Iptables { line } = &l.locator {
                if let Some(spec) = line.strip_prefix("-A ") {
                    batch.line("nat", format!("-D {spec}"));
                }
            }
        }
        if teardown {
            for l in &base_lines {
                if let Some(spec) = l.strip_prefix("-A ") {
                    batch.line("nat", format!("-D {spec}"));
                }
            }
            for chain in [DNAT_CHAIN, MASQ_CHAIN] {
                if has_chain(chain) {
                    batch.line("nat", format!("-F {chain}"));
                    batch.line("nat", format!("-X {chain}"));
                }
            }
        }
        if let Some(plan) = add {
            // Declaring an existing chain to iptables-restore flushes it, even with --noflush: only new ones.
            for chain in [DNAT_CHAIN, MASQ_CHAIN] {
                if !has_chain(chain) {
                    batch.line("nat", format!(":{chain} - [0:0]"));
                }
            }
            let has_base = |pred: &dyn Fn(&str) -> bool| base_lines.iter().any(|l| pred(l));
            for hook in ["PREROUTING", "OUTPUT"] {
                if !has_base(&|l: &str| {
                    l.starts_with(&format!("-A {hook} ")) && l.contains(DNAT_CHAIN)
                }) {
                    batch.line(
                        "nat",
                        format!(
                        "-A {hook} -m addrtype --dst-type LOCAL -m comment --comment {BASE_COMMENT} -j {DNAT_CHAIN}"
                    ));
                }
            }
            if plan.masquerade {
                if !has_base(&|l: &str| l.starts_with("-A POSTROUTING ") && l.contains(MASQ_CHAIN))
                {
                    // Prepended, as the reference does: masquerading must win over other POSTROUTING rules.
                    batch.line(
                        "nat",
                        format!(
                            "-I POSTROUTING 1 -m comment --comment {BASE_COMMENT} -j {MASQ_CHAIN}"
                        ),
                    );
                }
                if let MarkWith::Bit(bit) = plan.mark {
                    let comment = masq_comment(bit);
                    if !has_base(&|l: &str| comment_of(l).as_deref() == Some(comment.as_str())) {
                        batch.line(
                            "nat",
                            format!(
                            "-A {MASQ_CHAIN} -m mark --mark {} -m comment --comment {} -j MASQUERADE",
                            mask(bit),
                            quote(&comment)
                        ));
                    }
                }
            }
            for r in &plan.rules {
                for line in mapping_lines(plan, r) {
                    batch.line("nat", line);
                }
            }
        }
        // The cached listing is stale from here on.
        self.saved[idx(family)] = None;
        tool(family).restore(&batch).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{PortMapConf, PortMapping, Protocol};
    use crate::owner::Owner;
    use twill_cni::NetConf;

    fn plan(extra: serde_json::Value) -> Plan {
        let mut conf =
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "backend": "iptables"});
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut conf =
            PortMapConf::parse(&NetConf::parse(conf.to_string().as_bytes()).unwrap()).unwrap();
        conf.mappings = vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        }];
        Plan::new(
            &conf,
            &Owner::new("n", "c", "eth0"),
            "10.0.0.2".parse().unwrap(),
        )
    }

    #[test]
    fn conditions_and_external_mark_chain_are_used() {
        let p = plan(serde_json::json!({
            "conditionsV4": ["!", "-s", "192.168.0.0/16"],
            "externalSetMarkChain": "KUBE-MARK-MASQ"
        }));
        assert!(!p.masquerade, "an external mark chain's owner masquerades");
        let lines = mapping_lines(&p, &p.rules[0]);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[2].contains("! -s 192.168.0.0/16"), "{lines:#?}");
        assert!(!lines[0].contains("192.168.0.0/16"), "{lines:#?}");
        assert!(lines[0].ends_with("-j KUBE-MARK-MASQ"), "{}", lines[0]);
        assert!(
            lines[2].ends_with("-j DNAT --to-destination 10.0.0.2:80"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn mark_bit_sets_only_that_bit() {
        let p = plan(serde_json::json!({"markMasqBit": 14}));
        let lines = mapping_lines(&p, &p.rules[0]);
        assert!(
            lines[0].ends_with("-j MARK --set-xmark 0x4000/0x4000"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("-s 127.0.0.1/32"), "{}", lines[1]);
    }

    #[test]
    fn saved_lines_split_like_a_shell() {
        let l = r#"-A TWILL-HOSTPORTS -p tcp -m tcp --dport 80 -m comment --comment "n/c/eth0 tcp/*/80" -j DNAT --to-destination 10.0.0.2:80"#;
        assert_eq!(comment_of(l).as_deref(), Some("n/c/eth0 tcp/*/80"));
        assert_eq!(
            comment_of("-A X -m comment --comment bare -j ACCEPT").as_deref(),
            Some("bare")
        );
        assert_eq!(quote("n/c/eth0 tcp/*/80"), "\"n/c/eth0 tcp/*/80\"");
        assert_eq!(quote("10.0.0.2:80"), "10.0.0.2:80");
    }
}
