//! The plugin half's side of the socket: one synchronous call per invocation.

use crate::protocol::{read_message, write_message, Call, Reply};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use twill_cni::Error;

/// Why a call failed: the daemon could not be reached at all (DEL treats that as nothing left to
/// release), or it was reached and failed.
#[derive(Debug)]
pub enum CallError {
    Unreachable(Error),
    Failed(Error),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Unreachable(e) | CallError::Failed(e) => e,
        }
    }
}

/// Sends `call` to the daemon at `socket` and waits for its reply. No timeout of our own: an ADD lasts
/// as long as the daemon's DHCP exchange (bounded by its `-timeout` and `-resendtimeout`), and the
/// runtime bounds the plugin.
pub fn call(socket: &Path, call: &Call) -> std::result::Result<Reply, CallError> {
    let op = match call {
        Call::Allocate { .. } => "allocate",
        Call::Release { .. } => "release",
        Call::Gc { .. } => "gc",
        Call::Status => "status",
    };
    let stream = UnixStream::connect(socket).map_err(|e| {
        CallError::Unreachable(Error::failed(format!(
            "error dialing DHCP daemon at {}: {e}",
            socket.display()
        )))
    })?;
    let failed = |e: io::Error| {
        CallError::Failed(Error::failed(format!(
            "error calling the DHCP daemon ({op}) at {}: {e}",
            socket.display()
        )))
    };
    write_message(&stream, call).map_err(failed)?;
    let reply: Reply = read_message(&stream).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            // The reference daemon answers our call with an HTTP error: its plugin speaks Go net/rpc.
            CallError::Failed(Error::failed(format!(
                "the DHCP daemon at {} does not speak twill's protocol (a twill dhcp plugin needs                  twill's `dhcp daemon`, not the reference's): {e}",
                socket.display()
            )))
        } else {
            failed(e)
        }
    })?;
    if let Reply::Error { code, msg } = reply {
        return Err(CallError::Failed(Error::new(code, msg, "")));
    }
    Ok(reply)
}

/// The reply as a result: `Reply::Error` was already turned into `Err` by [`call`].
pub fn unexpected(reply: &Reply) -> Error {
    Error::failed(format!("unexpected reply from the DHCP daemon: {reply:?}"))
}
