//! `"backend": "firewalld"`: each container address becomes a source of a firewalld zone
//! (`trusted` unless `firewalldZone` says otherwise). The reference talks D-Bus directly; we drive
//! `firewall-cmd`, which talks the same D-Bus API, so no D-Bus client lives in the plugin. With no
//! D-Bus system bus or no firewalld on it, ADD fails with a message saying so; an empty `backend`
//! then means iptables, as in the reference.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use twill_cni::{Error, Result};

use crate::iptables::host_net;

const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

fn system_bus() -> PathBuf {
    // `unix:path=/x/y` is the only form we follow; anything else is treated as the default.
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .ok()
        .and_then(|a| {
            a.strip_prefix("unix:path=")
                .map(|p| p.split(',').next().unwrap_or(p).to_string())
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_BUS))
}

fn firewall_cmd(args: &[&str]) -> std::io::Result<std::process::Output> {
    twill_cni::child::bind_to_parent(&mut Command::new("firewall-cmd"))
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Why firewalld cannot be used, or `None` when it is running.
pub fn unavailable() -> Option<String> {
    let bus = system_bus();
    if !bus.exists() {
        return Some(format!(
            "firewalld is not running: no D-Bus system bus at {}",
            bus.display()
        ));
    }
    match firewall_cmd(&["--state"]) {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "firewalld is not running: firewall-cmd --state: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Some(format!(
            "firewalld cannot be reached: run firewall-cmd: {e}"
        )),
    }
}

pub fn is_running() -> bool {
    unavailable().is_none()
}

fn require() -> Result<()> {
    match unavailable() {
        None => Ok(()),
        Some(why) => Err(Error::failed(format!("firewalld backend: {why}"))),
    }
}

fn run(action: &str, zone: &str, ip: IpAddr) -> Result<std::process::Output> {
    let zone_arg = format!("--zone={zone}");
    let src = format!("--{action}-source={}", host_net(ip));
    firewall_cmd(&[&zone_arg, &src])
        .map_err(|e| Error::failed(format!("firewalld backend: run firewall-cmd: {e}")))
}

pub fn add(zone: &str, ips: &[IpAddr]) -> Result<()> {
    require()?;
    for ip in ips {
        let out = run("add", zone, *ip)?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && !text.contains("ZONE_ALREADY_SET") {
            return Err(Error::failed(format!(
                "failed to add the address {} to {zone} zone: {}",
                host_net(*ip),
                text.trim()
            )));
        }
    }
    Ok(())
}

/// Errors are ignored, as the reference does: the source may be gone already.
pub fn del(zone: &str, ips: &[IpAddr]) -> Result<()> {
    if unavailable().is_some() {
        return Ok(());
    }
    for ip in ips {
        let _ = run("remove", zone, *ip);
    }
    Ok(())
}

pub fn check(zone: &str, ips: &[IpAddr]) -> Result<()> {
    require()?;
    for ip in ips {
        let out = run("query", zone, *ip)?;
        if !out.status.success() {
            return Err(Error::failed(format!(
                "failed to find the address {} in {zone} zone",
                host_net(*ip)
            )));
        }
    }
    Ok(())
}
