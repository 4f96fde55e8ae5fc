//! The host-device plugin's configuration: every key of the reference (`device`, `hwaddr`,
//! `kernelpath`, `pciBusID`, `runtimeConfig.deviceID`, `useInterfaceNetwork`, `dns`, `ipam`), and
//! whether the PCI device is bound to a userspace (DPDK) driver, decided before anything is touched.
//! Names that end up in a sysfs path are validated first: one path component, never `..`.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use twill_cni::{Dns, Error, Request, Result};

/// Where the kernel lists PCI and auxiliary-bus devices.
pub const SYS_BUS_PCI: &str = "/sys/bus/pci/devices";
pub const SYS_BUS_AUXILIARY: &str = "/sys/bus/auxiliary/devices";

/// Drivers that hand a NIC to userspace (DPDK): such a device has no kernel netdev to move.
const USERSPACE_DRIVERS: [&str; 3] = ["vfio-pci", "uio_pci_generic", "igb_uio"];

/// How the device on the node is found; the first key set wins, in the reference's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    HwAddr(String),
    KernelPath(String),
    Pci(String),
    Auxiliary(String),
}

#[derive(Debug, Clone)]
pub struct HostDeviceConf {
    pub selector: Selector,
    /// The PCI device is bound to a userspace driver: nothing is moved, IPAM's result is only reported.
    pub dpdk: bool,
    /// Copy the node device's addresses, routes and rules into the pod.
    pub use_interface_network: bool,
    pub dns: Dns,
    pub ipam_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default, rename = "deviceID")]
    device_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    device: String,
    #[serde(default)]
    hwaddr: String,
    #[serde(default)]
    kernelpath: String,
    #[serde(default, rename = "pciBusID")]
    pci_bus_id: String,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    use_interface_network: bool,
    #[serde(default)]
    dns: Option<Dns>,
}

/// A bus device name (`0000:03:00.0`, `mlx5_core.sf.4`) must name one entry of the bus directory.
fn bus_entry(bus: &str, name: &str) -> Result<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(Path::new(bus).join(name)),
        _ => Err(Error::invalid_config(format!(
            "invalid device address {name:?}: must be one name under {bus}"
        ))),
    }
}

/// `true` when the PCI device's driver is one of the userspace drivers. As the reference, a device
/// without a driver (or that does not exist) is an error.
fn has_dpdk_driver(pci: &str) -> Result<bool> {
    let dev = bus_entry(SYS_BUS_PCI, pci)?;
    let lstat_error = |p: &Path, e: std::io::Error| {
        Error::failed(format!(
            "error with host device: lstat {}: {}",
            p.display(),
            crate::locate::os_error_text(&e)
        ))
    };
    let resolved = std::fs::canonicalize(&dev).map_err(|e| lstat_error(&dev, e))?;
    let link = resolved.join("driver");
    let driver = std::fs::canonicalize(&link).map_err(|e| lstat_error(&link, e))?;
    let name = driver
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(USERSPACE_DRIVERS.contains(&name.as_str()))
}

impl HostDeviceConf {
    pub fn load(req: &Request) -> Result<HostDeviceConf> {
        let raw: Raw = req.config.plugin_config()?;
        let mut pci = raw.pci_bus_id;
        let mut aux = String::new();
        // runtimeConfig's standard device id (from a device plugin) names a PCI or auxiliary device.
        let device_id = raw.runtime_config.unwrap_or_default().device_id;
        if !device_id.is_empty() {
            if bus_entry(SYS_BUS_PCI, &device_id)?.exists() {
                pci = device_id;
            } else if bus_entry(SYS_BUS_AUXILIARY, &device_id)?.exists() {
                pci.clear();
                aux = device_id;
            } else {
                return Err(Error::failed(format!(
                    "runtime config DeviceID {device_id} not found or unsupported"
                )));
            }
        }
        let selector = if !raw.device.is_empty() {
            Selector::Name(raw.device)
        } else if !raw.hwaddr.is_empty() {
            Selector::HwAddr(raw.hwaddr)
        } else if !raw.kernelpath.is_empty() {
            Selector::KernelPath(raw.kernelpath)
        } else if !pci.is_empty() {
            Selector::Pci(pci.clone())
        } else if !aux.is_empty() {
            Selector::Auxiliary(aux)
        } else {
            return Err(Error::failed(
                r#"specify either "device", "hwaddr", "kernelpath" or "pciBusID""#,
            ));
        };
        let dpdk = if pci.is_empty() {
            false
        } else {
            has_dpdk_driver(&pci)?
        };
        Ok(HostDeviceConf {
            selector,
            dpdk,
            use_interface_network: raw.use_interface_network,
            dns: raw.dns.unwrap_or_default(),
            ipam_type: req.config.ipam_type().map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_entries_are_single_names() {
        assert!(bus_entry(SYS_BUS_PCI, "0000:00:03.0").is_ok());
        for bad in ["..", ".", "../../devices", "a/b", "/etc", ""] {
            assert!(bus_entry(SYS_BUS_PCI, bad).is_err(), "{bad:?} accepted");
        }
    }
}
