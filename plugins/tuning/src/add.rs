//! ADD, inside the pod: the sysctls, then the saved copy of the link attributes about to change, then MAC,
//! promisc, MTU, allmulti and txqlen (in one request; the reference makes one per attribute).
//! Unlike the reference, a failure rolls back what was done: earlier sysctls get their old values back, the
//! link its saved attributes, and the saved copy is removed.

use crate::backup::{self, Saved};
use crate::config::TuningConf;
use std::path::{Path, PathBuf};
use twill_cni::{Context, Error, Result, Undo};
use twill_kernel::{Handle, LinkChange};

/// Write one sysctl file (no read-back: some, like `route/flush`, are write-only).
fn write_sysctl(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value.as_bytes())
        .map_err(|e| Error::failed(format!("open {}: {e}", file.display())))
}

/// Everything ADD changes in the pod. Runs in the pod's network namespace.
pub fn apply(
    conf: &TuningConf,
    files: &[(PathBuf, String)],
    ifname: &str,
    backup_path: &Path,
    network: &str,
) -> Result<()> {
    let mut undo = Undo::new();
    for (file, value) in files {
        // The old value, to put back if a later step fails; unreadable (write-only) keys are not restored.
        let old = std::fs::read_to_string(file)
            .ok()
            .map(|v| v.trim_end_matches('\n').to_string());
        write_sysctl(file, value)?;
        if let Some(old) = old {
            undo.push(format!("restore {}", file.display()), move || {
                write_sysctl(file, &old)
            });
        }
    }
    if conf.changes_link() {
        let h = Handle::current().context("netlink socket in the pod namespace")?;
        let link = h
            .link_by_name(ifname)
            .map_err(|e| Error::failed(format!("failed to get {ifname:?}: {e}")))?;
        let index = link.index;
        let saved = Saved::of(&link, conf, network);
        saved.save(backup_path)?;
        {
            let h = h.clone();
            undo.push("restore the link's attributes", move || {
                saved.restore(&h, index)?;
                backup::remove(backup_path)
            });
        }
        // One request for every attribute: the RTNL lock is taken once, not once per attribute.
        let changes = LinkChange {
            mac: conf.mac.as_ref().map(|(_, m)| *m),
            mtu: conf.mtu,
            up: None,
            promisc: conf.promisc.then_some(true),
            allmulti: conf.allmulti,
            txqlen: conf.txqlen,
        };
        h.change_link(index, &changes).map_err(|e| {
            Error::failed(format!("failed to change {}: {e}", describe(conf, ifname)))
        })?;
    }
    undo.commit();
    Ok(())
}

/// What ADD changes on the link, for error messages: "MAC c2:…, MTU 1400 of \"eth0\"".
fn describe(conf: &TuningConf, ifname: &str) -> String {
    let mut what = Vec::new();
    if let Some((text, _)) = &conf.mac {
        what.push(format!("MAC {text}"));
    }
    if conf.promisc {
        what.push("promisc".to_string());
    }
    if let Some(mtu) = conf.mtu {
        what.push(format!("MTU {mtu}"));
    }
    if let Some(on) = conf.allmulti {
        what.push(format!("allmulti {on}"));
    }
    if let Some(q) = conf.txqlen {
        what.push(format!("txQLen {q}"));
    }
    format!("{} of {ifname:?}", what.join(", "))
}
