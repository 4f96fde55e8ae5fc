//! Flushing stale UDP conntrack entries for newly mapped host ports (docs/cni-spec-notes.md §12 portmap). A UDP
//! "connection" to a host port that existed before the DNAT rule (e.g. a client retrying while the pod starts) would
//! otherwise keep its old, un-NATed mapping until it idles out. Done over ctnetlink: one dump of the family's table,
//! then one delete per matching original tuple (the tuple attribute sent back verbatim) — tens of microseconds, where
//! exec'ing `conntrack -D` costs milliseconds per port.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_HDR: usize = 16;
const NFGEN_HDR: usize = 4;

/// Deletes conntrack entries of `family` (`libc::AF_INET`/`AF_INET6`) whose original destination is one of
/// `ports` over `protocol`. Returns how many were deleted. Entries vanishing meanwhile are not errors.
pub fn flush(family: u8, protocol: u8, ports: &[u16]) -> io::Result<usize> {
    if ports.is_empty() || table_is_empty() {
        return Ok(0);
    }
    let sock = Socket::open()?;
    let tuples = sock.matching_tuples(family, protocol, ports)?;
    let mut deleted = 0;
    for tuple in tuples {
        let mut msg = header(
            IPCTNL_MSG_CT_DELETE,
            libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16,
            family,
        );
        msg.extend_from_slice(&tuple);
        finish(&mut msg);
        sock.send(&msg)?;
        match sock.ack() {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The dump walks every bucket of the kernel's conntrack hash, which is shared by all namespaces
/// (262144 buckets here: ~12 ms). This namespace's entry count is one file read away; when it is zero
/// there is nothing to flush. Unknown (no conntrack sysctl) means "not known empty".
fn table_is_empty() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .is_ok_and(|c| c.trim() == "0")
}

fn header(msg_type: u16, flags: u16, family: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel fills
    m.extend_from_slice(&[family, 0 /* NFNETLINK_V0 */, 0, 0]);
    m
}

fn finish(m: &mut [u8]) {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
}

/// Netlink attributes in `buf`: (type without flags, payload, whole attribute including its header).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let item = (ty, &buf[at + 4..at + len], &buf[at..at + len]);
        at += (len + 3) & !3;
        Some(item)
    })
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _, _)| *t == ty).map(|(_, p, _)| p)
}

struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open() -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        Ok(Socket { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // The kernel is the default destination of a netlink socket.
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty())?;
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads messages until `f` says stop; `f` gets (type, payload after the netlink header).
    fn read_messages(&self, mut f: impl FnMut(u16, &[u8]) -> io::Result<bool>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut at = 0usize;
            while at + NLM_HDR <= n {
                let len =
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < NLM_HDR || at + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &buf[at + NLM_HDR..at + len];
                if ty == NLMSG_ERROR {
                    let code = payload
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EIO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    if !f(ty, payload)? {
                        return Ok(());
                    }
                } else if !f(ty, payload)? {
                    return Ok(());
                }
                at += (len + 3) & !3;
            }
        }
    }

    fn ack(&self) -> io::Result<()> {
        self.read_messages(|ty, _| Ok(ty != NLMSG_ERROR))
    }

    fn matching_tuples(&self, family: u8, protocol: u8, ports: &[u16]) -> io::Result<Vec<Vec<u8>>> {
        let mut msg = header(
            IPCTNL_MSG_CT_GET,
            libc::NLM_F_REQUEST as u16 | libc::NLM_F_DUMP as u16,
            family,
        );
        finish(&mut msg);
        self.send(&msg)?;
        let mut out = Vec::new();
        self.read_messages(|ty, payload| {
            if ty == NLMSG_DONE {
                return Ok(false);
            }
            let Some(body) = payload.get(NFGEN_HDR..) else {
                return Ok(true);
            };
            if payload.first() != Some(&family) {
                return Ok(true);
            }
            for (t, tuple, whole) in attrs(body) {
                if t != CTA_TUPLE_ORIG {
                    continue;
                }
                let Some(proto) = find(tuple, CTA_TUPLE_PROTO) else {
                    continue;
                };
                let num = find(proto, CTA_PROTO_NUM).and_then(|p| p.first().copied());
                let port = find(proto, CTA_PROTO_DST_PORT)
                    .filter(|p| p.len() >= 2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]));
                if num == Some(protocol) && port.is_some_and(|p| ports.contains(&p)) {
                    out.push(whole.to_vec());
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_padding() {
        // Two attributes: type 1 with 1 byte payload (padded to 8), type 0x8002 (nested flag) with 4 bytes.
        let buf = [5u8, 0, 1, 0, 7, 0, 0, 0, 8, 0, 2, 0x80, 1, 2, 3, 4];
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(t, p, _)| (t, p.to_vec())).collect();
        assert_eq!(got, vec![(1, vec![7]), (2, vec![1, 2, 3, 4])]);
    }
}
