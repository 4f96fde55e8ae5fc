//! `selinuxContext`: the tap is created by a process running under that label, as the reference does
//! (`ip tuntap add` exec'd with the label set as the thread's exec context), because a tun device takes
//! its security label from the task that creates it and a process can only change its label across an
//! exec. Without SELinux the kernel refuses the exec context and ADD fails, as the reference's does.

use std::process::Command;

use twill_cni::{Error, Result};
use twill_kernel::{NetNs, TapSpec};

fn set_exec_label(label: &str) -> std::io::Result<()> {
    std::fs::write("/proc/thread-self/attr/exec", label)
}

/// Creates `spec` in `pod` through `ip tuntap add` run under `label`.
pub fn create_labelled(pod: &NetNs, label: &str, spec: &TapSpec) -> Result<()> {
    let run = || -> Result<()> {
        // Runs on a thread of its own inside the pod: the label and the namespace are this thread's,
        // and the child is forked from it.
        set_exec_label(label).map_err(|e| {
            Error::failed(format!(
                "failed set socket label: write /proc/thread-self/attr/exec: {}",
                e.to_string()
                    .to_lowercase()
                    .split(" (os error")
                    .next()
                    .unwrap_or_default()
            ))
        })?;
        let mut args = vec!["tuntap", "add", "mode", "tap", "name", spec.name.as_str()];
        if spec.multi_queue {
            args.push("multi_queue");
        }
        let (owner, group) = (
            spec.owner.map(|u| u.to_string()),
            spec.group.map(|g| g.to_string()),
        );
        if let Some(u) = &owner {
            args.extend(["user", u.as_str()]);
        }
        if let Some(g) = &group {
            args.extend(["group", g.as_str()]);
        }
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| Error::failed(format!("failed to run ip tuntap: {e}")))?;
        if !out.status.success() {
            return Err(Error::failed(format!(
                "failed to run command {}: {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            )));
        }
        Ok(())
    };
    pod.run(run)
        .map_err(|e| Error::failed(format!("failed to enter the pod namespace: {e}")))?
}
