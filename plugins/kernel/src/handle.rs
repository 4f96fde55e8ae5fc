//! A NETLINK_ROUTE socket bound to one namespace, and the request/ack/dump machinery.
//!
//! The socket is created by a short-lived thread inside the target namespace (a netlink socket
//! belongs to the namespace it was created in, whichever thread later uses it). All kernel errors
//! become [`Error`]s here and only here.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, NetlinkError, Result};
use crate::netns::NetNs;

/// The kernel caps one dump datagram at 32 KiB (netlink_recvmsg); twice that leaves room.
const RECV_BUF: usize = 64 * 1024;
/// A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is retried this many times.
const DUMP_ATTEMPTS: usize = 5;
/// `NLMSGERR_ATTR_MSG` from linux/netlink.h: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_HEADER_LEN: usize = 16;

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
    seq: u32,
    buf: Vec<u8>,
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
                conn: Mutex::new(Conn {
                    socket,
                    seq: 0,
                    buf: Vec::with_capacity(RECV_BUF),
                }),
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
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Extended acks carry the kernel's reason ("Nexthop device is not up"); capped acks keep the
    // request from being echoed back in every error.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    // Strict checking makes the kernel honour the filters in dump headers (ifindex, family, table),
    // so dumps return only what was asked for.
    let _ = socket.set_netlink_get_strict_chk(true);
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
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            self.buf.clear();
            let n = match self.socket.recv(&mut self.buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n > self.buf.len() {
                return Err(
                    io::Error::new(io::ErrorKind::InvalidData, "netlink reply truncated").into(),
                );
            }
            let mut offset = 0;
            while offset + NETLINK_HEADER_LEN <= self.buf.len() {
                let bytes = &self.buf[offset..];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < NETLINK_HEADER_LEN || len > bytes.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message",
                    )
                    .into());
                }
                let frame = &bytes[..len];
                offset += (len + 3) & !3;
                let msg_flags = u16::from_ne_bytes([frame[6], frame[7]]);
                let msg_seq = u32::from_ne_bytes([frame[8], frame[9], frame[10], frame[11]]);
                if msg_seq != seq {
                    // A late reply to an earlier request that failed half way: not ours.
                    continue;
                }
                if msg_flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame);
                match parsed {
                    Ok(m) => match m.payload {
                        // A dump that fails half way ends with NLMSG_DONE carrying -errno.
                        NetlinkPayload::Done(done) if dump && done.code < 0 => {
                            return Err(io::Error::from_raw_os_error(-done.code).into())
                        }
                        NetlinkPayload::Done(_) if dump => return Ok((replies, interrupted)),
                        NetlinkPayload::Error(err) => match err.code {
                            None if !dump => return Ok((replies, interrupted)),
                            None => {}
                            Some(_) => {
                                return Err(NetlinkError {
                                    source: err.to_io(),
                                    detail: ext_ack_message(&err.header, msg_flags),
                                })
                            }
                        },
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    },
                    // An object the parser does not understand must not hide the others of a
                    // dump; but the dump's end (DONE/ERROR) must be understood or we would wait
                    // forever.
                    Err(_) if dump && !is_control(frame) => {}
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()).into())
                    }
                }
            }
        }
    }
}

/// NLMSG_ERROR or NLMSG_DONE: the messages that end an exchange.
fn is_control(frame: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([frame[4], frame[5]]);
    kind == NLMSG_ERROR || kind == NLMSG_DONE
}

/// The extended-ack text of an NLMSG_ERROR: with NETLINK_CAP_ACK the payload is the original
/// header followed by attributes (linux/netlink.h, `enum nlmsgerr_attrs`).
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    const NLM_F_ACK_TLVS: u16 = 0x200;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NETLINK_HEADER_LEN {
        return None;
    }
    let orig_len = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    // With CAP_ACK only the header is echoed; without it the whole request is.
    let capped = flags & 0x100 != 0;
    let mut rest = if capped {
        &payload[NETLINK_HEADER_LEN..]
    } else {
        payload.get(((orig_len + 3) & !3)..)?
    };
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &rest[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = rest.get(((len + 3) & !3)..).unwrap_or_default();
    }
    None
}
