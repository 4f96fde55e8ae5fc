//! A NETLINK_ROUTE socket bound to one namespace, and the request/ack/dump machinery.
//!
//! The socket is created by a short-lived thread inside the target namespace (a netlink socket
//! belongs to the namespace it was created in, whichever thread later uses it). All kernel errors
//! become [`Error`]s here and only here.

use std::io;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::error::{Error, NetlinkError, Result};
use crate::netns::NetNs;
use crate::nl::{Reply, Socket};

/// A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

/// A NETLINK_ROUTE socket in one namespace. Cheap to clone (shared socket); safe to use from any
/// thread (requests are serialised).
///
/// Keep one per namespace for the whole operation and pass it around: it is deliberately not cached
/// globally, because an open socket pins its namespace, and a long-running process must not keep
/// deleted pod namespaces alive.
#[derive(Clone, Debug)]
pub struct Handle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Conn>,
    netns: String,
}

#[derive(Debug)]
struct Conn {
    socket: Socket,
}

impl Handle {
    /// A socket in the calling thread's namespace.
    pub fn current() -> Result<Handle> {
        let socket =
            open_socket().map_err(|e| Error::new("open netlink socket", "", "current netns", e))?;
        Ok(Self::from_socket(socket, "current netns".to_string()))
    }

    /// A socket inside `netns`, opened by a short-lived thread (see [`NetNs::run`]).
    pub fn in_netns(netns: &NetNs) -> Result<Handle> {
        let label = netns.label();
        let socket = netns
            .run(open_socket)?
            .map_err(|e| Error::new("open netlink socket", "", label.as_str(), e))?;
        Ok(Self::from_socket(socket, label))
    }

    fn from_socket(socket: Socket, netns: String) -> Handle {
        Handle {
            inner: Arc::new(Inner {
                conn: Mutex::new(Conn { socket }),
                netns,
            }),
        }
    }

    /// The namespace label used in error messages.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        // A panic while holding the lock leaves at worst unread replies, which are skipped by sequence.
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request that the kernel acknowledges; returns any messages it sent before the ack
    /// (e.g. the object for NLM_F_ECHO or a GET by key).
    pub(crate) fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        object: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.conn()
            .exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags, false)
            .map(|(msgs, _)| msgs)
            .map_err(|e| Error::from_netlink(op, object(), self.netns(), e))
    }

    /// Dumps a table; retries when the kernel reports the dump was interrupted by a change.
    pub(crate) fn dump(
        &self,
        msg: RouteNetlinkMessage,
        op: &'static str,
        object: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut conn = self.conn();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match conn.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, true) {
                Ok((msgs, false)) => return Ok(msgs),
                Ok((msgs, true)) if attempt >= DUMP_ATTEMPTS => return Ok(msgs),
                Ok((_, true)) => continue,
                Err(e) => return Err(Error::from_netlink(op, object(), self.netns(), e)),
            }
        }
    }
}

fn open_socket() -> io::Result<Socket> {
    let socket = Socket::open(NETLINK_ROUTE)?;
    // Strict checking makes the kernel honour the filters in dump headers (ifindex, family, table),
    // so dumps return only what was asked for.
    let _ = socket.inner().set_netlink_get_strict_chk(true);
    Ok(socket)
}

impl Conn {
    /// One request and its replies. Returns the inner messages and whether a dump was interrupted.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        dump: bool,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), NetlinkError> {
        let seq = self.socket.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);

        let mut replies = Vec::new();
        let mut interrupted = false;
        self.socket.exchange(
            &out,
            seq,
            seq,
            |_, e| NetlinkError::from(e),
            |frame, reply| {
                if frame.dump_interrupted() {
                    interrupted = true;
                }
                match reply {
                    // A dump that fails half way ends with NLMSG_DONE carrying -errno.
                    Reply::Done { errno: Some(errno) } if dump => {
                        Err(io::Error::from_raw_os_error(errno).into())
                    }
                    Reply::Done { errno: None } if dump => Ok(ControlFlow::Break(())),
                    Reply::Done { .. } => Ok(ControlFlow::Continue(())),
                    Reply::Ack if !dump => Ok(ControlFlow::Break(())),
                    Reply::Ack => Ok(ControlFlow::Continue(())),
                    Reply::Error { errno, detail } => Err(NetlinkError {
                        source: io::Error::from_raw_os_error(errno),
                        detail,
                    }),
                    Reply::Message => {
                        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame.bytes) {
                            Ok(m) => {
                                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                                    replies.push(inner);
                                }
                                Ok(ControlFlow::Continue(()))
                            }
                            // An object the parser does not understand must not hide the others
                            // of a dump.
                            Err(_) if dump => Ok(ControlFlow::Continue(())),
                            Err(e) => {
                                Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())
                                    .into())
                            }
                        }
                    }
                }
            },
        )?;
        Ok((replies, interrupted))
    }
}
