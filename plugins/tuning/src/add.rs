//! ADD, inside the pod (on one thread that enters its namespace): the sysctls, then the saved copy of the
//! link attributes about to change, then MAC, promisc, MTU, allmulti and txqlen, in the reference's order.
//! Unlike the reference, a failure rolls back what was done: earlier sysctls get their old values back, the
//! link its saved attributes, and the saved copy is removed.

use crate::backup::{self, Saved};
use crate::config::TuningConf;
use std::path::{Path, PathBuf};
use twill_cni::{Context, Error, Result, Undo};
use twill_kernel::Handle;

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
        if let Some((text, mac)) = &conf.mac {
            h.set_link_mac(index, *mac).map_err(|e| {
                Error::failed(format!("failed to set MAC {text} on {ifname:?}: {e}"))
            })?;
        }
        if conf.promisc {
            h.set_link_promisc(index, true)
                .map_err(|e| Error::failed(format!("failed to set promisc on {ifname:?}: {e}")))?;
        }
        if let Some(mtu) = conf.mtu {
            h.set_link_mtu(index, mtu).map_err(|e| {
                Error::failed(format!("failed to set MTU {mtu} on {ifname:?}: {e}"))
            })?;
        }
        if let Some(on) = conf.allmulti {
            h.set_link_allmulti(index, on)
                .map_err(|e| Error::failed(format!("failed to set allmulti on {ifname:?}: {e}")))?;
        }
        if let Some(q) = conf.txqlen {
            h.set_link_txqlen(index, q).map_err(|e| {
                Error::failed(format!("failed to set txQLen {q} on {ifname:?}: {e}"))
            })?;
        }
    }
    undo.commit();
    Ok(())
}
