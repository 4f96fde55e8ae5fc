//! The execution environment (docs/cni-spec-notes.md §2). libcni sets all six variables and leaves unused ones empty,
//! so a present-but-empty variable is treated exactly like an absent one.

use crate::args::CniArgs;
use crate::error::{Error, Result};
use crate::names::{ContainerId, IfName};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(Error::invalid_env(format!("unknown CNI_COMMAND: {other}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// The validated attachment parameters of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: Option<ContainerId>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<IfName>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

fn var(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

impl Env {
    /// Read and validate the variables `command` needs. Missing required ones are reported together, as skel
    /// does ("required env variables [CNI_NETNS CNI_IFNAME] missing"), before any is validated.
    pub fn from_process(command: Command) -> Result<Self> {
        Env::from_lookup(command, var)
    }

    pub fn from_lookup(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Status | Command::Gc | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|n| get(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid_env(format!(
                "required env variables [{}] missing",
                missing.join(" ")
            )));
        }
        let attachment = required.contains(&"CNI_CONTAINERID");
        let container_id = match get("CNI_CONTAINERID") {
            Some(id) if attachment => Some(ContainerId::parse(&id)?),
            _ => None,
        };
        let ifname = match get("CNI_IFNAME") {
            Some(name) if attachment => Some(IfName::parse(&name)?),
            _ => None,
        };
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let netns = if attachment {
            get("CNI_NETNS").map(PathBuf::from)
        } else {
            None
        };
        Ok(Env {
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(command: Command, vars: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(command, |k| m.get(k).cloned().filter(|v| !v.is_empty()))
    }

    #[test]
    fn empty_variables_count_as_missing() {
        let e = env(
            Command::Add,
            &[
                ("CNI_CONTAINERID", ""),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ],
        );
        assert_eq!(
            e.unwrap_err().msg,
            "required env variables [CNI_CONTAINERID] missing"
        );
    }

    #[test]
    fn del_does_not_need_netns() {
        let e = env(
            Command::Del,
            &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
        )
        .unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn status_and_gc_ignore_attachment_variables() {
        let e = env(
            Command::Gc,
            &[("CNI_CONTAINERID", "-bad"), ("CNI_PATH", "/a:/b")],
        )
        .unwrap();
        assert!(e.container_id.is_none());
        assert_eq!(e.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }
}
