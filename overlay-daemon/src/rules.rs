//! Masquerade and forward-accept rules for `--ip-masq` with flannel's semantics (docs/architecture.md, "Traffic
//! rules"): pod->pod traffic stays un-NATed, pods->outside and host->pods are masqueraded, packets kube-proxy already
//! marked (0x4000) are left alone, and FORWARD accepts the pod network. nftables by default (tables `flannel-ipv4`,
//! chains `postrtg`/`forward`, as flanneld's nftables mode), iptables (`FLANNEL-POSTRTG`/`FLANNEL-FWD`) selectable.

use ipnet::Ipv4Net;
use tokio::process::Command;

use crate::flags::RulesBackend;

const NFT_TABLE: &str = "flannel-ipv4";
const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";

async fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut c = Command::new(cmd);
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    let mut child = c.spawn().map_err(|e| format!("running {cmd}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing to {cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The rule set for one (Network, node subnet) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficRules {
    pub backend: RulesBackend,
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
}

impl TrafficRules {
    fn nft_script(&self) -> String {
        let (n, s) = (self.network, self.subnet);
        // "add + delete + define" in one transaction: atomic replace whether or not the table existed.
        format!(
            "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n\
             \tchain postrtg {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x4000 == 0x4000 return comment \"{MASQ_COMMENT}\"\n\
             \t\tip saddr {s} ip daddr {n} return comment \"{MASQ_COMMENT}\"\n\
             \t\tip saddr {n} ip daddr {s} return comment \"{MASQ_COMMENT}\"\n\
             \t\tip saddr != {n} ip daddr {s} return comment \"{MASQ_COMMENT}\"\n\
             \t\tip saddr {n} ip daddr != 224.0.0.0/4 masquerade fully-random comment \"{MASQ_COMMENT}\"\n\
             \t\tip saddr != {n} ip daddr {n} masquerade fully-random comment \"{MASQ_COMMENT}\"\n\
             \t}}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {n} accept comment \"{FWD_COMMENT}\"\n\
             \t\tip daddr {n} accept comment \"{FWD_COMMENT}\"\n\
             \t}}\n}}\n"
        )
    }

    fn iptables_rules(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let (n, s) = (self.network.to_string(), self.subnet.to_string());
        let m = |v: &[&str]| -> Vec<String> {
            let mut r: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            r.extend(["-m", "comment", "--comment", MASQ_COMMENT].map(String::from));
            r
        };
        let f = |v: &[&str]| -> Vec<String> {
            let mut r: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            r.extend(["-m", "comment", "--comment", FWD_COMMENT].map(String::from));
            r
        };
        vec![
            ("nat", "POSTROUTING", m(&["-j", "FLANNEL-POSTRTG"])),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&["-m", "mark", "--mark", "0x4000/0x4000", "-j", "RETURN"]),
            ),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&["-s", &s, "-d", &n, "-j", "RETURN"]),
            ),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&["-s", &n, "-d", &s, "-j", "RETURN"]),
            ),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&["!", "-s", &n, "-d", &s, "-j", "RETURN"]),
            ),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&[
                    "-s",
                    &n,
                    "!",
                    "-d",
                    "224.0.0.0/4",
                    "-j",
                    "MASQUERADE",
                    "--random-fully",
                ]),
            ),
            (
                "nat",
                "FLANNEL-POSTRTG",
                m(&[
                    "!",
                    "-s",
                    &n,
                    "-d",
                    &n,
                    "-j",
                    "MASQUERADE",
                    "--random-fully",
                ]),
            ),
            ("filter", "FORWARD", f(&["-j", "FLANNEL-FWD"])),
            ("filter", "FLANNEL-FWD", f(&["-s", &n, "-j", "ACCEPT"])),
            ("filter", "FLANNEL-FWD", f(&["-d", &n, "-j", "ACCEPT"])),
        ]
    }

    /// Removes what the other backend may have left from an earlier run (flannel cleans up the other mode's
    /// chains/tables at start-up, docs/architecture.md, "Traffic rules"). Best effort: the other tool may not even be
    /// installed.
    pub async fn remove_other_backend(&self) {
        match self.backend {
            RulesBackend::Nftables => self.remove_iptables().await,
            RulesBackend::Iptables => {
                let _ = run("nft", &["delete", "table", "ip", NFT_TABLE], None).await;
            }
        }
    }

    /// Installs the whole set, replacing whatever of ours was there.
    pub async fn apply(&self) -> Result<(), String> {
        match self.backend {
            RulesBackend::Nftables => run("nft", &["-f", "-"], Some(&self.nft_script()))
                .await
                .map(|_| ()),
            RulesBackend::Iptables => {
                self.remove_iptables().await;
                for (table, chain) in [("nat", "FLANNEL-POSTRTG"), ("filter", "FLANNEL-FWD")] {
                    let _ = run("iptables", &["-w", "-t", table, "-N", chain], None).await;
                }
                for (table, chain, rule) in self.iptables_rules() {
                    let mut args = vec!["-w", "-t", table, "-A", chain];
                    args.extend(rule.iter().map(String::as_str));
                    run("iptables", &args, None).await?;
                }
                Ok(())
            }
        }
    }

    async fn remove_iptables(&self) {
        for (table, jump_from, chain, comment) in [
            ("nat", "POSTROUTING", "FLANNEL-POSTRTG", MASQ_COMMENT),
            ("filter", "FORWARD", "FLANNEL-FWD", FWD_COMMENT),
        ] {
            while run(
                "iptables",
                &[
                    "-w",
                    "-t",
                    table,
                    "-D",
                    jump_from,
                    "-j",
                    chain,
                    "-m",
                    "comment",
                    "--comment",
                    comment,
                ],
                None,
            )
            .await
            .is_ok()
            {}
            let _ = run("iptables", &["-w", "-t", table, "-F", chain], None).await;
            let _ = run("iptables", &["-w", "-t", table, "-X", chain], None).await;
        }
    }

    /// Whether every rule is present (flannel checks with `-C` every resync and rebuilds all if one is missing).
    pub async fn intact(&self) -> Result<bool, String> {
        match self.backend {
            RulesBackend::Nftables => {
                let Ok(listing) = run("nft", &["list", "table", "ip", NFT_TABLE], None).await
                else {
                    return Ok(false);
                };
                let (n, s) = (self.network.to_string(), self.subnet.to_string());
                Ok(listing.matches(MASQ_COMMENT).count() == 6
                    && listing.matches(FWD_COMMENT).count() == 2
                    && listing.contains(&n)
                    && listing.contains(&s)
                    && listing.contains("hook postrouting")
                    && listing.contains("hook forward"))
            }
            RulesBackend::Iptables => {
                for (table, chain, rule) in self.iptables_rules() {
                    let mut args = vec!["-w", "-t", table, "-C", chain];
                    args.extend(rule.iter().map(String::as_str));
                    if run("iptables", &args, None).await.is_err() {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Checks and repairs; returns whether a repair was needed.
    pub async fn ensure(&self) -> Result<bool, String> {
        if self.intact().await? {
            return Ok(false);
        }
        self.apply().await?;
        Ok(true)
    }
}
