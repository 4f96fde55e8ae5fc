//! One error type for the crate: every variant carries what was being attempted, so a CNI error
//! built from it reads like "nftables: add rule to inet cni_plugins_masquerade/masq_checks: ...".

use std::fmt;
use std::io;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// A system call (socket, send, recv, spawning a command) failed.
    Io { context: String, source: io::Error },
    /// The kernel rejected a netlink request; `errno` is positive (e.g. `libc::ENOENT`), `message`
    /// is the extended ack text when the kernel gave one.
    Kernel {
        context: String,
        errno: i32,
        message: Option<String>,
    },
    /// An external command (`iptables`, `iptables-restore`) exited unsuccessfully.
    Command {
        context: String,
        status: Option<i32>,
        stderr: String,
    },
    /// The caller asked for something that cannot be expressed (bad value, name too long...).
    Invalid(String),
    /// The kernel answered with something this crate does not understand.
    Protocol(String),
    /// A rule that should be present (CNI CHECK) is not.
    Missing(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The positive errno of a kernel error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the kernel said the object (table, chain, rule) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Kernel {
                context,
                errno,
                message,
            } => {
                let text = io::Error::from_raw_os_error(*errno);
                match message {
                    Some(m) => write!(f, "{context}: {text} ({m})"),
                    None => write!(f, "{context}: {text}"),
                }
            }
            Error::Command {
                context,
                status,
                stderr,
            } => {
                let status = match status {
                    Some(code) => format!("exit status {code}"),
                    None => "killed by a signal".to_string(),
                };
                if stderr.trim().is_empty() {
                    write!(f, "{context}: {status}")
                } else {
                    write!(f, "{context}: {status}: {}", stderr.trim())
                }
            }
            Error::Invalid(m) | Error::Protocol(m) | Error::Missing(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
