//! Flushing stale UDP conntrack entries for newly mapped host ports (docs/cni-spec-notes.md §12 portmap). A UDP
//! "connection" to a host port that existed before the DNAT rule (e.g. a client retrying while the pod starts) would
//! otherwise keep its old, un-NATed mapping until it idles out. Done over ctnetlink: one dump of the family's table,
//! then one delete per matching original tuple (the tuple attribute sent back verbatim) — tens of microseconds, where
//! exec'ing `conntrack -D` costs milliseconds per port.

use std::io;
use std::ops::ControlFlow;

use twill_kernel::nl::{self, attributes, Frame, Reply, NLMSG_HDRLEN};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NFGEN_HDR: usize = 4;
const NLA_HDR: usize = 4;

/// Deletes conntrack entries of `family` (`libc::AF_INET`/`AF_INET6`) whose original destination is one of
/// `ports` over `protocol`. Returns how many were deleted. Entries vanishing meanwhile are not errors.
pub fn flush(family: u8, protocol: u8, ports: &[u16]) -> io::Result<usize> {
    if ports.is_empty() || table_is_empty() {
        return Ok(0);
    }
    let mut sock = nl::Socket::open(libc::NETLINK_NETFILTER as isize)?;
    let tuples = matching_tuples(&mut sock, family, protocol, ports)?;
    let mut deleted = 0;
    for tuple in tuples {
        let (seq, msg) = request(
            &mut sock,
            IPCTNL_MSG_CT_DELETE,
            libc::NLM_F_ACK as u16,
            family,
            &tuple,
        );
        let acked = sock.exchange(
            &msg,
            seq,
            seq,
            |_, e| e,
            |_, reply| match reply {
                Reply::Ack => Ok(ControlFlow::Break(())),
                Reply::Error { errno, .. } => Err(io::Error::from_raw_os_error(errno)),
                Reply::Message | Reply::Done { .. } => Ok(ControlFlow::Continue(())),
            },
        );
        match acked {
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

/// A ctnetlink request of `family` with the socket's next sequence number: netlink and nfgenmsg
/// headers, then `body`.
fn request(
    sock: &mut nl::Socket,
    msg_type: u16,
    flags: u16,
    family: u8,
    body: &[u8],
) -> (u32, Vec<u8>) {
    let seq = sock.next_seq();
    let len = (NLMSG_HDRLEN + NFGEN_HDR + body.len()) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel fills
    m.extend_from_slice(&[family, 0 /* NFNETLINK_V0 */, 0, 0]);
    m.extend_from_slice(body);
    (seq, m)
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attributes(buf, 0).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// The original tuples (whole attributes, header included, to be sent back verbatim) of the
/// family's conntrack entries whose destination is one of `ports` over `protocol`.
fn matching_tuples(
    sock: &mut nl::Socket,
    family: u8,
    protocol: u8,
    ports: &[u16],
) -> io::Result<Vec<Vec<u8>>> {
    let (seq, msg) = request(
        sock,
        IPCTNL_MSG_CT_GET,
        libc::NLM_F_DUMP as u16,
        family,
        &[],
    );
    let mut out = Vec::new();
    sock.exchange(
        &msg,
        seq,
        seq,
        |_, e| e,
        |frame, reply| match reply {
            Reply::Done { .. } | Reply::Ack => Ok(ControlFlow::Break(())),
            Reply::Error { errno, .. } => Err(io::Error::from_raw_os_error(errno)),
            Reply::Message => {
                collect_matching(frame, family, protocol, ports, &mut out);
                Ok(ControlFlow::Continue(()))
            }
        },
    )?;
    Ok(out)
}

fn collect_matching(
    frame: &Frame<'_>,
    family: u8,
    protocol: u8,
    ports: &[u16],
    out: &mut Vec<Vec<u8>>,
) {
    let payload = frame.payload();
    if payload.len() < NFGEN_HDR || payload.first() != Some(&family) {
        return;
    }
    for (t, tuple) in attributes(payload, NFGEN_HDR) {
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
            // The attribute's header sits right before its payload in the same message.
            let start = tuple.as_ptr() as usize - payload.as_ptr() as usize - NLA_HDR;
            out.push(payload[start..start + NLA_HDR + tuple.len()].to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_padding() {
        // Two attributes: type 1 with 1 byte payload (padded to 8), type 0x8002 (nested flag) with 4 bytes.
        let buf = [5u8, 0, 1, 0, 7, 0, 0, 0, 8, 0, 2, 0x80, 1, 2, 3, 4];
        let got: Vec<(u16, Vec<u8>)> = attributes(&buf, 0).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(got, vec![(1, vec![7]), (2, vec![1, 2, 3, 4])]);
    }
}
