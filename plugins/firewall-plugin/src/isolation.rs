//! `ingressPolicy`: `same-bridge` accepts connections into the container only from its own bridge,
//! `isolated` not even from there (Docker's `enable_icc=false`). As in the reference these are
//! iptables rules whatever the backend, per bridge and shared by every container on it, so DEL
//! leaves them: another container of the bridge may still rely on them.
//!
//! ```text
//! -I FORWARD 1 -j CNI-ISOLATION-STAGE-1
//! -I CNI-ISOLATION-STAGE-1 1 -i <br> ! -o <br> -j CNI-ISOLATION-STAGE-2
//! [isolated] -I CNI-ISOLATION-STAGE-1 1 -i <br> -o <br> -j DROP
//! -A CNI-ISOLATION-STAGE-1 -j RETURN
//! -I CNI-ISOLATION-STAGE-2 1 -o <br> -j DROP
//! -A CNI-ISOLATION-STAGE-2 -j RETURN
//! ```

use std::collections::HashSet;

use twill_cni::{Error, Result};
use twill_firewall::iptables::{declared_chain, Iptables, RestoreBatch};
use twill_firewall::nft::IpFamily;

use crate::iptables::TABLE;

const STAGE1: &str = "CNI-ISOLATION-STAGE-1";
const STAGE2: &str = "CNI-ISOLATION-STAGE-2";
const DEFAULT_COMMENT: &str = "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)";
const ROUNDS: usize = 3;

fn policy_comment(isolated: bool) -> String {
    format!(
        "CNI firewall plugin rules (ingressPolicy: {})",
        if isolated { "isolated" } else { "same-bridge" }
    )
}

/// A rule as `iptables -S` lists it, and whether it goes first in its chain.
struct Want {
    chain: &'static str,
    spec: String,
    first: bool,
}

fn wanted(bridge: &str, isolated: bool) -> Vec<Want> {
    let c = |s: &str| format!("-m comment --comment \"{s}\"");
    let policy = policy_comment(isolated);
    let mut w = vec![
        Want {
            chain: "FORWARD",
            spec: format!("{} -j {STAGE1}", c(DEFAULT_COMMENT)),
            first: true,
        },
        Want {
            chain: STAGE1,
            spec: format!("-i {bridge} ! -o {bridge} {} -j {STAGE2}", c(&policy)),
            first: true,
        },
    ];
    if isolated {
        w.push(Want {
            chain: STAGE1,
            spec: format!("-i {bridge} -o {bridge} {} -j DROP", c(&policy)),
            first: true,
        });
    }
    w.extend([
        Want {
            chain: STAGE1,
            spec: format!("{} -j RETURN", c(DEFAULT_COMMENT)),
            first: false,
        },
        Want {
            chain: STAGE2,
            spec: format!("-o {bridge} {} -j DROP", c(DEFAULT_COMMENT)),
            first: true,
        },
        Want {
            chain: STAGE2,
            spec: format!("{} -j RETURN", c(DEFAULT_COMMENT)),
            first: false,
        },
    ]);
    w
}

/// The bridge is the first interface of `prevResult`; its name goes into rule lines, so it must be
/// a plain interface name.
pub fn bridge_name(name: Option<&str>, policy: &str) -> Result<String> {
    let name = name.ok_or_else(|| {
        Error::invalid_config(format!(
            "interface needs to be set for ingress policy {policy:?}, make sure to chain \"firewall\" plugin with \"bridge\""
        ))
    })?;
    if name.is_empty() {
        return Err(Error::invalid_config("got empty bridge name"));
    }
    let ok = name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'/".contains(&b));
    if !ok {
        return Err(Error::invalid_config(format!(
            "bridge name {name:?} from prevResult is not a valid interface name"
        )));
    }
    Ok(name.to_string())
}

/// Installs the isolation rules of `bridge` in `family`, each only if missing.
pub fn setup(family: IpFamily, bridge: &str, isolated: bool) -> Result<()> {
    let ipt = Iptables::new(family);
    let want = wanted(bridge, isolated);
    let mut last = None;
    for _ in 0..ROUNDS {
        let lines = ipt
            .list(TABLE, None)
            .map_err(|e| Error::failed(e.to_string()))?;
        let declared: HashSet<&str> = lines.iter().filter_map(|l| declared_chain(l)).collect();
        let mut batch = RestoreBatch::new();
        for chain in [STAGE1, STAGE2] {
            if !declared.contains(chain) {
                batch.line(TABLE, format!("-N {chain}"));
            }
        }
        // Applied in order, as the reference runs its commands: an insertion at position 1 lands
        // before the ones made earlier (the isolated DROP before the bridge rule).
        for w in &want {
            let listed = format!("-A {} {}", w.chain, w.spec);
            if lines.contains(&listed) {
                continue;
            }
            if w.first {
                batch.line(TABLE, format!("-I {} 1 {}", w.chain, w.spec));
            } else {
                batch.line(TABLE, listed);
            }
        }
        match ipt.restore(&batch) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(
        Error::failed(last.map(|e| e.to_string()).unwrap_or_default())
            .context(format!("{}: ingress policy rules", ipt.binary())),
    )
}
