//! The netlink request loop shared by every protocol twill speaks (NETLINK_ROUTE here,
//! NETLINK_NETFILTER in twill-firewall): one socket, sequence numbers, sending a request and
//! reading its answers (acks, errors with the kernel's extended-ack text, dumps and their end).
//! What a protocol's messages mean stays with the protocol; how they travel lives here only.

use std::io;
use std::ops::ControlFlow;

use netlink_sys::SocketAddr;

/// The kernel caps one dump datagram at 32 KiB (netlink_recvmsg); twice that leaves room.
const RECV_BUF: usize = 64 * 1024;
/// `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Set on an answer of a dump that a concurrent change interrupted.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// With NETLINK_CAP_ACK only the request's header is echoed in an error.
const NLM_F_CAPPED: u16 = 0x100;
/// The error carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG` from linux/netlink.h: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// One message of a received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The message after its netlink header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[NLMSG_HDRLEN..]
    }

    /// Whether a dump this message belongs to was interrupted by a concurrent change.
    pub fn dump_interrupted(&self) -> bool {
        self.flags & NLM_F_DUMP_INTR != 0
    }
}

/// What one answer to our request is.
#[derive(Debug)]
pub enum Reply {
    /// A protocol message (an object of a dump, an echo): see [`Frame::bytes`].
    Message,
    /// NLMSG_ERROR with code 0.
    Ack,
    /// NLMSG_ERROR with an error: positive errno and the kernel's extended-ack text.
    Error { errno: i32, detail: Option<String> },
    /// NLMSG_DONE, the end of a dump; `errno` is set (positive) when the dump failed half way.
    Done { errno: Option<i32> },
}

/// A netlink socket in the namespace of the thread that opened it, with its sequence numbers
/// and receive buffer.
#[derive(Debug)]
pub struct Socket {
    socket: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens, binds and connects a socket of `protocol` (e.g. `NETLINK_ROUTE`), asking for
    /// extended acks (the kernel's reason for an error) and capped acks (an error does not echo
    /// the whole request). Both are best effort: without them errors are only less readable.
    pub fn open(protocol: isize) -> io::Result<Socket> {
        let mut socket = netlink_sys::Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Socket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Starts the sequence numbers at `seq` (the next request gets `seq + 1`).
    pub fn with_seq(mut self, seq: u32) -> Socket {
        self.seq = seq;
        self
    }

    /// The underlying socket, for socket options.
    pub fn inner(&self) -> &netlink_sys::Socket {
        &self.socket
    }

    /// The underlying socket, e.g. to close it later than now.
    pub fn into_inner(self) -> netlink_sys::Socket {
        self.socket
    }

    /// The last sequence number handed out.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The sequence number for the next message.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` (one or more messages numbered `first..=last`) in one datagram and hands
    /// every answer to those messages to `on_reply` until it breaks with a value. Answers with
    /// other sequence numbers are late answers to an earlier, abandoned request and are skipped.
    /// Transport failures and malformed datagrams become `io_error`s.
    pub fn exchange<T, E>(
        &mut self,
        request: &[u8],
        first: u32,
        last: u32,
        io_error: impl Fn(&'static str, io::Error) -> E,
        mut on_reply: impl FnMut(&Frame<'_>, Reply) -> Result<ControlFlow<T>, E>,
    ) -> Result<T, E> {
        self.socket
            .send(request, 0)
            .map_err(|e| io_error("send", e))?;
        loop {
            self.recv().map_err(|e| io_error("receive", e))?;
            for frame in frames(&self.buf) {
                let frame = frame.map_err(|e| io_error("receive", e))?;
                if frame.seq.wrapping_sub(first) > last.wrapping_sub(first) {
                    continue;
                }
                let reply = match frame.kind {
                    NLMSG_ERROR => decode_error(&frame).map_err(|e| io_error("receive", e))?,
                    NLMSG_DONE => {
                        let p = frame.payload();
                        let code = match p.get(..4) {
                            Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                            None => 0,
                        };
                        Reply::Done {
                            errno: (code < 0).then_some(-code),
                        }
                    }
                    _ => Reply::Message,
                };
                if let ControlFlow::Break(value) = on_reply(&frame, reply)? {
                    return Ok(value);
                }
            }
        }
    }

    /// Receives one datagram into the buffer; a datagram larger than the buffer is an error
    /// rather than silently cut.
    fn recv(&mut self) -> io::Result<()> {
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink message of {n} bytes truncated"),
                    ))
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The messages of one datagram, in order; a message whose length does not fit ends the datagram
/// with an error.
pub fn frames(datagram: &[u8]) -> impl Iterator<Item = io::Result<Frame<'_>>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "malformed netlink message of length {len} in a {} byte datagram",
                    rest.len()
                ),
            );
            rest = &[];
            return Some(Err(e));
        }
        let frame = Frame {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            bytes: &rest[..len],
        };
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some(Ok(frame))
    })
}

/// The attributes (type without the nested/byte-order bits, payload) of a message body after its
/// fixed header of `fixed` bytes; a malformed attribute ends the list.
pub fn attributes(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = fixed;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(body.get(at..at + 2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(body.get(at + 2..at + 4)?.try_into().ok()?);
        if len < 4 {
            return None;
        }
        let payload = body.get(at + 4..at + len)?;
        at += (len + 3) & !3;
        Some((kind & 0x3fff, payload))
    })
}

/// Decodes an `NLMSG_ERROR`: code 0 is an ack; otherwise the errno and the extended-ack text
/// (linux/netlink.h, `enum nlmsgerr_attrs`).
fn decode_error(frame: &Frame<'_>) -> io::Result<Reply> {
    let p = frame.payload();
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        ));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    if code == 0 {
        return Ok(Reply::Ack);
    }
    Ok(Reply::Error {
        errno: -code,
        detail: ext_ack_message(&p[4..], frame.flags),
    })
}

/// The extended-ack text after the echoed request.
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    let orig_len = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let rest = if flags & NLM_F_CAPPED != 0 {
        &payload[NLMSG_HDRLEN..]
    } else {
        payload.get(((orig_len + 3) & !3)..)?
    };
    let (_, text) = attributes(rest, 0).find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)?;
    let text = text.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(text).into_owned())
}
