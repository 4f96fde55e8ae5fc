//! `subnet.env` (flannel.md §8): the node's lease as read by the flannel CNI plugin. Written atomically
//! (temp file + fsync + rename, mode 0644) only once the device and rules are ready, so a reader never sees a
//! half-written file or a subnet whose data path is not programmed yet.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// flannel's exact format; `FLANNEL_SUBNET` is the gateway address (network + 1) with the subnet's prefix.
    pub fn render(&self) -> String {
        let gw = Ipv4Addr::from(u32::from(self.subnet.network()) + 1);
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            gw,
            self.subnet.prefix_len(),
            self.mtu,
            self.ip_masq
        )
    }

    pub fn write_atomically(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_missing_dirs(dir)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("subnet.env");
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Creates `dir` and its missing ancestors with mode 0755 (readable by the CNI plugin whatever the umask).
/// Directories that already exist are left exactly as they are: they belong to someone else (`/tmp` is 1777,
/// `/run` is the system's), and a daemon running as root must not change their mode or owner.
fn create_missing_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
        if d.exists() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(d) {
            // Only a directory this call created gets its mode fixed (the umask may have narrowed it).
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?,
            // Created by someone else in the meantime: theirs, left alone.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a previous run left in subnet.env: the previous subnet, reused on restart (flannel.md §4 step 4).
/// `FLANNEL_SUBNET=10.5.52.1/24` means `10.5.52.0/24`.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))
        .and_then(|v| v.trim().parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannel_format_and_reads_back_previous_subnet() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = std::env::temp_dir().join(format!("twilld-env-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        env.write_atomically(&path).unwrap();
        assert_eq!(
            previous_subnet(&path),
            Some("10.244.1.0/24".parse().unwrap())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_directory_keeps_its_mode_and_missing_ones_get_0755() {
        use std::os::unix::fs::PermissionsExt;
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: false,
        };
        let top = tempfile::tempdir().unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        env.write_atomically(&top.path().join("subnet.env"))
            .unwrap();
        env.write_atomically(&top.path().join("a/b/subnet.env"))
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(top.path()), 0o1777);
        assert_eq!(mode(&top.path().join("a")), 0o755);
        assert_eq!(mode(&top.path().join("a/b")), 0o755);
    }
}
