//! Why twilld stopped: one variant per stage that can fail for good, each with its cause, and the one place
//! that maps them to exit codes (2 for a bad command line, as flanneld; 1 for everything else).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use twill_files::FileError;

use crate::flags::FlagsError;
use crate::rules::RulesError;

#[derive(Debug)]
pub enum Error {
    /// The command line or `FLANNELD_*` environment is invalid.
    Flags(FlagsError),
    /// The async runtime could not start.
    Runtime(io::Error),
    /// The network config in the store exists but is invalid.
    Config(String),
    /// The health endpoint's address could not be bound.
    Healthz { addr: SocketAddr, source: io::Error },
    /// A netlink socket could not be opened.
    Netlink {
        what: &'static str,
        source: io::Error,
    },
    /// The kernel could not be reached (the daemon's netlink handle).
    Kernel(twill_kernel::Error),
    /// No usable underlay: interface selection, its MTU, or an address host-gw cannot route to.
    Underlay(String),
    /// The traffic rules cannot be built for the lease.
    Rules(RulesError),
    /// `subnet.env` could not be written.
    SubnetFile(FileError),
    /// A signal handler could not be installed.
    Signal(io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Flags(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Flags(e) => write!(f, "{e}"),
            Error::Runtime(e) => write!(f, "starting runtime: {e}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::Healthz { addr, source } => {
                write!(f, "binding healthz address {addr}: {source}")
            }
            Error::Netlink { what, source } => write!(f, "{what}: {source}"),
            Error::Kernel(e) => write!(f, "{e}"),
            Error::Underlay(e) => write!(f, "{e}"),
            Error::Rules(e) => write!(f, "{e}"),
            Error::SubnetFile(e) => write!(f, "{e}"),
            Error::Signal(e) => write!(f, "installing signal handler: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Flags(e) => Some(e),
            Error::Runtime(e) | Error::Signal(e) => Some(e),
            Error::Healthz { source, .. } | Error::Netlink { source, .. } => Some(source),
            Error::Rules(e) => Some(e),
            Error::Kernel(e) => Some(e),
            Error::SubnetFile(e) => Some(e),
            Error::Config(_) | Error::Underlay(_) => None,
        }
    }
}

impl From<FlagsError> for Error {
    fn from(e: FlagsError) -> Self {
        Error::Flags(e)
    }
}

impl From<RulesError> for Error {
    fn from(e: RulesError) -> Self {
        Error::Rules(e)
    }
}
