//! `iptables` / `ip6tables` driven as commands: single calls with `-w` (wait for the xtables lock
//! instead of failing when another process holds it), `-S` listings, and
//! `iptables-restore --noflush -w` batches, which apply a whole table's changes atomically in one
//! exec (one exec per operation instead of one per rule).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::nft::IpFamily;

/// A restore is atomic, so a failed attempt changed nothing and can be retried; concurrent
/// writers (iptables-nft's generation check, the legacy lock timing out) make that necessary.
const RESTORE_ATTEMPTS: u32 = 4;

/// The command set for one IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iptables {
    family: IpFamily,
}

impl Iptables {
    pub fn new(family: IpFamily) -> Iptables {
        Iptables { family }
    }

    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// `iptables` or `ip6tables`.
    pub fn binary(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }

    /// `iptables-restore` or `ip6tables-restore`.
    pub fn restore_binary(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        }
    }

    /// Runs `iptables -w <args>` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let context = format!("{} {}", self.binary(), args.join(" "));
        let out = twill_cni::child::bind_to_parent(&mut Command::new(self.binary()))
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("run {context}"), e))?;
        if !out.status.success() {
            return Err(Error::Command {
                context,
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The rules of `table` (optionally one chain) in `-S` form: `-P`/`-N` lines declaring
    /// chains, then `-A <chain> <match...>` lines.
    pub fn list(&self, table: &str, chain: Option<&str>) -> Result<Vec<String>> {
        let mut args = vec!["-t", table, "-S"];
        if let Some(c) = chain {
            args.push(c);
        }
        Ok(self.run(&args)?.lines().map(str::to_string).collect())
    }

    /// Applies `batch` with `iptables-restore --noflush -w` (retried when a concurrent writer
    /// makes it fail; the restore is atomic so a failed attempt changed nothing).
    pub fn restore(&self, batch: &RestoreBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let input = batch.render();
        let mut last_err = None;
        for attempt in 0..RESTORE_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(10 << attempt));
            }
            match self.restore_once(&input) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Protocol("iptables-restore never ran".into())))
    }

    /// Applies `batch` once, without retrying: for callers whose batch may fail for a reason that
    /// retrying cannot fix (a `-D` of a rule that is not there) and who have a fallback.
    pub fn try_restore(&self, batch: &RestoreBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.restore_once(&batch.render())
    }

    fn restore_once(&self, input: &str) -> Result<()> {
        let context = format!("{} --noflush -w", self.restore_binary());
        // Bound to us and holding our locks: a restore outliving a killed plugin could commit after the DEL
        // that was meant to undo it.
        let mut child = twill_cni::child::bind_to_parent(&mut Command::new(self.restore_binary()))
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("run {context}"), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| Error::io(format!("{context}: write rules"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("{context}: wait"), e))?;
        if !out.status.success() {
            return Err(Error::Command {
                context: format!("{context} with input:\n{input}"),
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

/// Input for `iptables-restore --noflush`: per table, lines like `:CHAIN - [0:0]` (create, or
/// flush an existing user chain), `-A ...`, `-D ...`, `-F CHAIN`, `-X CHAIN`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreBatch {
    tables: Vec<(String, Vec<String>)>,
}

impl RestoreBatch {
    pub fn new() -> RestoreBatch {
        RestoreBatch::default()
    }

    /// Adds one line to `table`'s section.
    pub fn line(&mut self, table: &str, line: impl Into<String>) -> &mut RestoreBatch {
        let line = line.into();
        match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, lines)) => lines.push(line),
            None => self.tables.push((table.to_string(), vec![line])),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|(_, l)| l.is_empty())
    }

    /// The text fed to `iptables-restore`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (table, lines) in &self.tables {
            s.push('*');
            s.push_str(table);
            s.push('\n');
            for l in lines {
                s.push_str(l);
                s.push('\n');
            }
            s.push_str("COMMIT\n");
        }
        s
    }
}

/// The chain name a `-S` line appends to (`-A <chain> ...`), if it is a rule line.
pub fn rule_chain(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next()) {
        (Some("-A"), Some(chain)) => Some(chain),
        _ => None,
    }
}

/// The chain a `-S` line declares (`-N <chain>`), if it is a declaration.
pub fn declared_chain(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next()) {
        (Some("-N"), Some(chain)) => Some(chain),
        _ => None,
    }
}

/// Turns a `-S` rule line (`-A ...`) into the line deleting that rule (`-D ...`).
pub fn delete_line(line: &str) -> Option<String> {
    line.strip_prefix("-A ").map(|rest| format!("-D {rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_batch_renders_one_section_per_table() {
        let mut b = RestoreBatch::new();
        b.line("nat", ":CNI-X - [0:0]")
            .line("filter", "-A FORWARD -j ACCEPT")
            .line("nat", "-A CNI-X -j MASQUERADE");
        assert_eq!(
            b.render(),
            "*nat\n:CNI-X - [0:0]\n-A CNI-X -j MASQUERADE\nCOMMIT\n*filter\n-A FORWARD -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn listing_lines_are_understood() {
        assert_eq!(
            rule_chain("-A POSTROUTING -s 10.0.0.1/32 -j CNI-X"),
            Some("POSTROUTING")
        );
        assert_eq!(declared_chain("-N CNI-X"), Some("CNI-X"));
        assert_eq!(declared_chain("-P POSTROUTING ACCEPT"), None);
        assert_eq!(
            delete_line("-A POSTROUTING -j CNI-X").as_deref(),
            Some("-D POSTROUTING -j CNI-X")
        );
    }
}
