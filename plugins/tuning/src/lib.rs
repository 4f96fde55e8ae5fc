//! The `tuning` CNI meta plugin: sysctls (only `net.*`, inside the pod), and the interface's MAC, promisc,
//! MTU, allmulti and txqlen; the original link attributes are saved in the reference's format and restored
//! by DEL. ADD rolls back on failure; DEL succeeds without the netns; GC removes the saved copies of
//! attachments that are gone.

mod add;
pub mod backup;
mod check;
pub mod config;
pub mod sysctl_key;

use config::TuningConf;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Plugin, Request, Result};
use twill_kernel::{Handle, NetNs};

#[derive(Debug, Default)]
pub struct Tuning;

/// The sysctl files of the config, validated (below `/proc/sys/net/`, on the allowlist if there is one).
fn sysctl_files(conf: &TuningConf, ifname: &str) -> Result<Vec<(PathBuf, String)>> {
    sysctl_key::check_allowed(
        conf.sysctls.iter().map(|(k, _)| k.as_str()),
        Path::new(sysctl_key::ALLOWLIST),
    )?;
    conf.sysctls
        .iter()
        .map(|(k, v)| Ok((sysctl_key::file_of(k, ifname)?, v.clone())))
        .collect()
}

fn prev_result(req: &Request) -> Result<CniResult> {
    req.config
        .prev_result()?
        .ok_or_else(|| Error::failed("Required prevResult missing"))
}

fn open_pod(path: &Path) -> Result<NetNs> {
    NetNs::open(path).with_context(|| format!("failed to open netns {:?}", path.display()))
}

/// Moves this process's only thread into the pod's network namespace. Everything tuning does with the
/// kernel is in there, so unlike the plugins that work on both sides it needs no helper thread (whose
/// hand-off costs milliseconds on a loaded node); files (the saved copies) are unaffected by the network
/// namespace.
fn enter(pod: &NetNs) -> Result<()> {
    nix::sched::setns(pod.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        Error::failed(format!(
            "failed to enter netns {:?}: {e}",
            pod.path().display()
        ))
    })
}

impl Plugin for Tuning {
    /// ADD and CHECK work inside the pod; DEL treats a namespace that is gone as nothing to restore.
    fn enters_netns(&self, command: Command) -> bool {
        matches!(command, Command::Add | Command::Check)
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = TuningConf::load(req)?;
        let ifname = req.ifname()?.as_str();
        let files = sysctl_files(&conf, ifname)?;
        let mut result = prev_result(req)?;
        let container_id = req.container_id()?.as_str();
        let pod = open_pod(req.netns()?)?;
        let backup_path = backup::path(&conf.data_dir, container_id, ifname);
        let network = req.config.name.as_str();
        enter(&pod)?;
        add::apply(&conf, &files, ifname, &backup_path, network)?;
        if let Some((text, _)) = &conf.mac {
            for i in result.interfaces.iter_mut().filter(|i| i.name == ifname) {
                i.mac = Some(text.clone());
            }
        }
        Ok(result)
    }

    /// Restores the saved attributes when the link is still there; the saved copy goes either way, except
    /// when restoring failed (then it stays for another DEL, as the reference). Never fails on the pod's
    /// state: like the reference, only a bad config is an error.
    fn del(&self, req: &Request) -> Result<()> {
        let conf = TuningConf::load(req)?;
        let ifname = req.ifname()?.as_str();
        let container_id = req.container_id()?.as_str();
        let path = backup::path(&conf.data_dir, container_id, ifname);
        if !path.exists() {
            return Ok(());
        }
        let pod = match req.env.netns.as_deref().map(NetNs::open) {
            Some(Ok(ns)) => ns,
            // No namespace any more: no link to restore.
            _ => return backup::remove(&path).or(Ok(())),
        };
        let outcome = enter(&pod).and_then(|()| -> Result<()> {
            let Some(saved) = backup::Saved::load(&path) else {
                return Ok(());
            };
            let h = Handle::current().context("netlink socket in the pod namespace")?;
            match h.link_by_name(ifname) {
                Ok(link) => saved.restore(&h, link.index)?,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::failed(format!("failed to get {ifname:?}: {e}"))),
            }
            backup::remove(&path)
        });
        if let Err(e) = outcome {
            eprintln!("tuning: DEL of {container_id}/{ifname}: {e}");
        }
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = TuningConf::load(req)?;
        prev_result(req)?;
        let ifname = req.ifname()?.as_str();
        let files: Vec<(PathBuf, String)> = conf
            .sysctls
            .iter()
            .map(|(k, v)| Ok((sysctl_key::file_of(k, ifname)?, v.clone())))
            .collect::<Result<_>>()?;
        let pod = open_pod(req.netns()?)?;
        enter(&pod)?;
        check::check(&conf, &files, ifname)
    }

    /// Ready whenever it is installed: it needs no daemon and no state to serve ADD.
    fn status(&self, req: &Request) -> Result<()> {
        TuningConf::load(req).map(|_| ())
    }

    fn gc(&self, req: &Request) -> Result<()> {
        let conf = TuningConf::load(req)?;
        // An absent list is not an empty one (which means "release everything"): leave the files alone then.
        let Some(valid) = req.config.valid_attachments()? else {
            return Ok(());
        };
        let keep: Vec<(String, String)> = valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        backup::gc(&conf.data_dir, req.config.name.as_str(), &keep)
    }
}
