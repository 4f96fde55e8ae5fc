//! One error type for every kernel operation.
//!
//! A CNI error reaches a human through the runtime's logs, often without any other context, so the
//! message must say what was attempted, on which object and in which namespace, e.g.
//! `add address 10.1.0.2/24 to eth0 in /run/netns/x: File exists (os error 17)`.

use std::fmt;
use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed kernel operation: what (`op`), on what (`object`), where (`netns`) and why (`source`),
/// plus the kernel's extended-ack message when it sent one.
#[derive(Debug)]
pub struct Error {
    op: &'static str,
    object: String,
    netns: String,
    source: io::Error,
    detail: Option<String>,
}

impl Error {
    /// Builds an error. `netns` is a human label: a namespace path or "current netns".
    pub fn new(
        op: &'static str,
        object: impl Into<String>,
        netns: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Error {
            op,
            object: object.into(),
            netns: netns.into(),
            source,
            detail: None,
        }
    }

    pub(crate) fn with_detail(mut self, detail: Option<String>) -> Self {
        self.detail = detail.filter(|d| !d.is_empty());
        self
    }

    /// Re-labels an error produced by a lower layer (e.g. the socket) with the operation it was part of.
    pub(crate) fn from_netlink(
        op: &'static str,
        object: impl Into<String>,
        netns: &str,
        e: NetlinkError,
    ) -> Self {
        Error::new(op, object, netns, e.source).with_detail(e.detail)
    }

    /// The operation that failed, e.g. `"add address"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The object the operation was about, e.g. `"10.1.0.2/24 to eth0"`.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The namespace the operation ran in (a path, or "current netns").
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The kernel's extended-ack message, when it sent one (e.g. "Nexthop device is not up").
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The underlying I/O error.
    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// The errno, when the failure came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The object already exists (EEXIST): an address, route, neighbour or link with that key.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object (or the namespace) does not exist. Which errno means "not found" depends on the
    /// operation: links report ENODEV, routes and neighbours ESRCH/ENOENT, a namespace path ENOENT,
    /// and deleting an address that is not there EADDRNOTAVAIL.
    pub fn is_not_found(&self) -> bool {
        match self.errno() {
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) => true,
            Some(libc::EADDRNOTAVAIL) => self.op == "delete address",
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if !self.object.is_empty() {
            write!(f, " {}", self.object)?;
        }
        write!(f, " in {}: {}", self.netns, self.source)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = e.source.kind();
        io::Error::new(kind, e)
    }
}

/// A failure at the netlink layer, before it is labelled with the operation.
#[derive(Debug)]
pub(crate) struct NetlinkError {
    pub(crate) source: io::Error,
    pub(crate) detail: Option<String>,
}

impl From<io::Error> for NetlinkError {
    fn from(source: io::Error) -> Self {
        NetlinkError {
            source,
            detail: None,
        }
    }
}
