//! CHECK, inside the pod: every configured sysctl has its value, and the link has the configured MAC,
//! promiscuous mode (on when configured, off otherwise, as the reference), MTU, allmulti and txqlen.

use crate::config::TuningConf;
use std::path::PathBuf;
use twill_cni::{Error, Result};
use twill_kernel::Handle;

pub fn check(conf: &TuningConf, files: &[(PathBuf, String)], ifname: &str) -> Result<()> {
    for (file, want) in files {
        let cur = std::fs::read_to_string(file)
            .map_err(|e| Error::failed(format!("open {}: {e}", file.display())))?;
        let cur = cur.strip_suffix('\n').unwrap_or(&cur);
        if cur != want {
            return Err(Error::failed(format!(
                "Error: Tuning configured value of {} is {want}, current value is {cur}",
                file.display()
            )));
        }
    }
    let h = Handle::current()
        .map_err(|e| Error::failed(format!("netlink socket in the pod namespace: {e}")))?;
    let link = h
        .link_by_name(ifname)
        .map_err(|_| Error::failed(format!("Cannot find container link {ifname}")))?;
    if let Some((text, mac)) = &conf.mac {
        if link.mac != Some(*mac) {
            return Err(Error::failed(format!(
                "Error: Tuning configured Ethernet of {ifname} is {text}, current value is {}",
                link.mac.map(|m| m.to_string()).unwrap_or_default()
            )));
        }
    }
    if conf.promisc != link.promisc {
        return Err(Error::failed(format!(
            "Error: Tuning link {ifname} configured promisc is {}, current value is {}",
            conf.promisc,
            u8::from(link.promisc)
        )));
    }
    if let Some(mtu) = conf.mtu {
        if mtu != link.mtu {
            return Err(Error::failed(format!(
                "Error: Tuning configured MTU of {ifname} is {mtu}, current value is {}",
                link.mtu
            )));
        }
    }
    if let Some(on) = conf.allmulti {
        if on != link.allmulti {
            return Err(Error::failed(format!(
                "Error: Tuning configured all-multicast mode of {ifname} is {on}, current value is {}",
                link.allmulti
            )));
        }
    }
    if let Some(q) = conf.txqlen {
        if q != link.txqlen {
            return Err(Error::failed(format!(
                "Error: Tuning configured Transmit Queue Length of {ifname} is {q}, current value is {}",
                link.txqlen
            )));
        }
    }
    Ok(())
}
