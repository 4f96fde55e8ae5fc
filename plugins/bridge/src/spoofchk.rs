//! `macspoofchk` (docs/cni-spec-notes.md §10.1): bridge-family nftables rules that drop frames entering the bridge from
//! the pod's port unless their source MAC is the container's. Off by default, so it is driven through the
//! `nft` command (one atomic script per operation) rather than the native netlink client.
//!
//! Layout as the reference: table `bridge nat`, base chain `PREROUTING` (filter, prerouting, priority -300)
//! with one jump per port, identified by the comment `macspoofchk-<attachment id>`, into per-port chains
//! `cni-br-iface-<id>` → `cni-br-iface-<id>-mac`.

use crate::naming::attachment_id;
use std::io::Write;
use std::process::{Command, Stdio};
use twill_cni::{Error, Result};
use twill_kernel::MacAddr;

fn nft(args: &[&str], script: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("nft");
    twill_cni::child::bind_to_parent(&mut cmd)
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::failed(format!("macspoofchk: exec nft: {e}")))?;
    if let (Some(s), Some(mut input)) = (script, child.stdin.take()) {
        input
            .write_all(s.as_bytes())
            .map_err(|e| Error::failed(format!("macspoofchk: write nft script: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::failed(format!("macspoofchk: wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "macspoofchk: nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn names(container_id: &str, ifname: &str) -> (String, String, String) {
    let id = attachment_id(container_id, ifname);
    let chain = format!("cni-br-iface-{id}");
    let mac_chain = format!("{chain}-mac");
    let comment = format!("macspoofchk-{id}");
    (chain, mac_chain, comment)
}

/// Install the check for the port `host_veth` whose pod uses `mac`.
pub fn setup(container_id: &str, ifname: &str, host_veth: &str, mac: MacAddr) -> Result<()> {
    let (chain, mac_chain, comment) = names(container_id, ifname);
    let script = format!(
        "add table bridge nat\n\
         add chain bridge nat PREROUTING {{ type filter hook prerouting priority -300 ; policy accept ; }}\n\
         add chain bridge nat {chain}\n\
         flush chain bridge nat {chain}\n\
         add chain bridge nat {mac_chain}\n\
         flush chain bridge nat {mac_chain}\n\
         add rule bridge nat {chain} jump {mac_chain} comment \"{comment}\"\n\
         add rule bridge nat {mac_chain} ether saddr {mac} return comment \"{comment}\"\n\
         add rule bridge nat {mac_chain} drop comment \"{comment}\"\n\
         add rule bridge nat PREROUTING iifname \"{host_veth}\" jump {chain} comment \"{comment}\"\n"
    );
    nft(&["-f", "-"], Some(&script)).map(|_| ())
}

/// Remove the check of the attachment; nothing there is success.
pub fn teardown(container_id: &str, ifname: &str) -> Result<()> {
    let (chain, mac_chain, comment) = names(container_id, ifname);
    let listing = match nft(
        &["-a", "list", "chain", "bridge", "nat", "PREROUTING"],
        None,
    ) {
        Ok(l) => l,
        // No table or chain: nothing was ever installed.
        Err(_) => return Ok(()),
    };
    let mut script = String::new();
    for line in listing.lines() {
        if !line.contains(&format!("comment \"{comment}\"")) {
            continue;
        }
        if let Some(handle) = line
            .rsplit("# handle ")
            .next()
            .and_then(|h| h.trim().parse::<u64>().ok())
        {
            script.push_str(&format!(
                "delete rule bridge nat PREROUTING handle {handle}\n"
            ));
        }
    }
    let chains = nft(&["list", "chains", "bridge"], None).unwrap_or_default();
    for c in [&chain, &mac_chain] {
        if chains.contains(&format!("chain {c} ")) {
            script.push_str(&format!("flush chain bridge nat {c}\n"));
        }
    }
    for c in [&chain, &mac_chain] {
        if chains.contains(&format!("chain {c} ")) {
            script.push_str(&format!("delete chain bridge nat {c}\n"));
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script)).map(|_| ())
}
