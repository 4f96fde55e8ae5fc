//! Sysctl keys of the config (`net.ipv4.conf.IFNAME.arp_notify`) and the files they name, with the
//! reference's rules: dots become slashes, the first `IFNAME` becomes the request's interface, the path is
//! cleaned, and it must stay below `/proc/sys/net/` — the network namespace's own sysctls, never the
//! host's. Checked before anything is written, so one bad key cannot leave half the list applied.
//!
//! Optionally restricted by `/etc/cni/tuning/allowlist.conf`: one regular expression per line, a key must
//! match one of them (unanchored, as the reference's Go `regexp.MatchString`).

use std::path::{Path, PathBuf};
use twill_cni::{Error, Result};

pub const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";

/// The file of `key` for interface `ifname`, or an error when it would leave `/proc/sys/net/`.
pub fn file_of(key: &str, ifname: &str) -> Result<PathBuf> {
    let slashed = key.replace('.', "/").replacen("IFNAME", ifname, 1);
    // filepath.Join("/proc/sys", key) cleans the result: empty and "." parts vanish, ".." pops (never
    // above the root).
    let mut parts: Vec<&str> = vec!["proc", "sys"];
    for part in slashed.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let ok = parts.len() > 3
        && parts[..3] == ["proc", "sys", "net"]
        && parts.iter().all(|p| !p.contains('\0'));
    if !ok {
        return Err(Error::invalid_config(format!(
            "invalid net sysctl key: {slashed:?}"
        )));
    }
    Ok(Path::new("/").join(parts.join("/")))
}

/// The allowlist's patterns, `None` when the file does not exist (no restriction, as the reference).
fn read_allowlist(path: &Path) -> Result<Option<Vec<String>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::failed(format!("read {}: {e}", path.display()))),
    }
}

/// Every key must match a pattern of the allowlist at `path`, when there is one. As the reference: the file
/// is read on every ADD, sysctls or not (an unreadable allowlist fails ADD either way), and a pattern is
/// compiled only when a key is tried against it, in file order, so a bad pattern fails only the ADD that
/// reaches it.
pub fn check_allowed<'a>(keys: impl Iterator<Item = &'a str>, path: &Path) -> Result<()> {
    let Some(patterns) = read_allowlist(path)? else {
        return Ok(());
    };
    for key in keys {
        if !allowed(key, &patterns, path)? {
            return Err(Error::invalid_config(format!(
                "Sysctl {key} is not allowed. Only the following sysctls are allowed: {patterns:?}"
            )));
        }
    }
    Ok(())
}

/// Whether `key` matches one of `patterns`, tried in order up to the first match.
fn allowed(key: &str, patterns: &[String], path: &Path) -> Result<bool> {
    for p in patterns {
        let re = regex::Regex::new(p).map_err(|e| {
            Error::invalid_config(format!("{}: bad pattern {p:?}: {e}", path.display()))
        })?;
        if re.is_match(key) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_files_below_proc_sys_net() {
        assert_eq!(
            file_of("net.ipv4.conf.IFNAME.arp_notify", "eth0").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/arp_notify")
        );
        // Interface names keep their dots: IFNAME is replaced after the dots are.
        assert_eq!(
            file_of("net/ipv4/conf/IFNAME/forwarding", "eth0.100").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        // Dots are separators, so ".." in a dotted key is only empty parts.
        assert_eq!(
            file_of("net/../core/somaxconn", "eth0").unwrap(),
            PathBuf::from("/proc/sys/net/core/somaxconn")
        );
        assert_eq!(
            file_of("net.core.somaxconn", "eth0").unwrap(),
            PathBuf::from("/proc/sys/net/core/somaxconn")
        );
    }

    #[test]
    fn keys_outside_net_are_refused() {
        for bad in [
            "kernel.hostname",
            "net",
            "net.",
            "netfoo.x",
            "..kernel.hostname",
            "",
        ] {
            let e = file_of(bad, "eth0").unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
        }
    }

    #[test]
    fn allowlist_restricts_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist.conf");
        assert!(check_allowed(["net.core.x"].into_iter(), &path).is_ok());
        std::fs::write(
            &path,
            "^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$\n\n  ^net\\.core\\.somaxconn$ \n",
        )
        .unwrap();
        assert!(check_allowed(["net.ipv4.conf.IFNAME.arp_notify"].into_iter(), &path).is_ok());
        assert!(check_allowed(["net.core.somaxconn"].into_iter(), &path).is_ok());
        assert_eq!(
            check_allowed(["net.ipv4.ip_forward"].into_iter(), &path)
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn a_bad_pattern_fails_only_the_keys_that_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist.conf");
        std::fs::write(&path, "^net\\.core\\.somaxconn$\n(unclosed\n").unwrap();
        assert!(check_allowed(std::iter::empty(), &path).is_ok());
        assert!(check_allowed(["net.core.somaxconn"].into_iter(), &path).is_ok());
        assert!(check_allowed(["net.ipv4.ip_forward"].into_iter(), &path).is_err());
    }

    #[test]
    fn an_unreadable_allowlist_fails_even_without_sysctls() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails, as the reference's read does.
        assert!(check_allowed(std::iter::empty(), dir.path()).is_err());
    }
}
