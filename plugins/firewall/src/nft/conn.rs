//! The `NETLINK_NETFILTER` socket: commits batches with one `sendmsg` and reads the kernel's
//! answers; dumps tables, chains and rules.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::attr::{self, Attr, AttrWriter};
use super::batch::{comment_from_userdata, Batch};
use super::expr::Expr;
use super::sys::*;
use super::{park, Family, Hook};
use crate::error::{Error, Result};

/// Receive buffer for one datagram; the kernel sizes dump skbs to at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Batches larger than this get a bigger socket send buffer.
const LARGE_BATCH: usize = 128 * 1024;
/// A dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried this many times.
const DUMP_RETRIES: usize = 10;
/// Safety net against a kernel that never answers (the batch is processed synchronously inside
/// `sendmsg`, so answers are normally already queued when we start reading).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A rule as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    pub exprs: Vec<Expr>,
}

/// A chain as listed by the kernel. `hook`, `priority` and `chain_type` are set for base chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub handle: u64,
    pub hook: Option<Hook>,
    pub priority: Option<i32>,
    pub chain_type: Option<String>,
}

/// A table as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub family: Family,
    pub name: String,
}

/// A netfilter netlink socket in the network namespace of the thread that opened it.
///
/// Closing a socket blocks while nf_tables has deferred destroy work pending (5–20 ms measured):
/// on `NETLINK_URELEASE` it flushes that work, which frees deleted rules (and replaced chain
/// data) only after `synchronize_rcu`. After our own deletions a plugin has no reason to wait for
/// that, so a socket that committed a deletion is not closed on drop but parked (see
/// [`super::close_parked_sockets`]): closed by a later drop once old enough for the wait to be
/// over, or by the kernel at process exit, by when the plugin's remaining work has usually
/// covered the grace period.
pub struct Nft {
    socket: Option<Socket>,
    seq: Cell<u32>,
    deleted: Cell<bool>,
}

impl Drop for Nft {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            if self.deleted.get() {
                park::park(socket);
            }
            // Otherwise the socket closes here: nothing of ours awaits a grace period.
        }
    }
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nft").field("seq", &self.seq.get()).finish()
    }
}

fn nlmsg(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = (NLMSG_HDRLEN + 4 + attrs.len()) as u32;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version, res_id (big endian)
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
}

/// One received netlink message.
struct Received<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn split_messages(mut buf: &[u8]) -> Result<Vec<Received<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(Error::Protocol(format!(
                "malformed netlink message of length {len} in a {} byte datagram",
                buf.len()
            )));
        }
        out.push(Received {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(out)
}

/// Decodes an `NLMSG_ERROR` payload: (negative errno or 0, extended ack message).
fn decode_error(msg: &Received<'_>) -> Result<(i32, Option<String>)> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(Error::Protocol("short netlink error message".into()));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the original request is not echoed, only its header.
        let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let skip = if msg.flags & 0x100 != 0 {
            // NLM_F_CAPPED: only the header was echoed.
            4 + NLMSG_HDRLEN
        } else {
            4 + ((orig_len + 3) & !3)
        };
        if let Some(tlvs) = p.get(skip..) {
            if let Ok(attrs) = attr::parse(tlvs) {
                text = attr::find(&attrs, NLMSGERR_ATTR_MSG).map(|a| a.string());
            }
        }
    }
    Ok((code, text))
}

impl Nft {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::io("nftables: open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("nftables: bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("nftables: connect netlink socket", e))?;
        // Best effort: without them errors are still reported, only less readable.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        set_recv_timeout(&socket, RECV_TIMEOUT)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Nft {
            socket: Some(socket),
            seq: Cell::new(seed),
            deleted: Cell::new(false),
        })
    }

    fn socket(&self) -> &Socket {
        // Only `drop` takes the socket out.
        self.socket.as_ref().expect("nft socket present until drop")
    }

    fn next_seq(&self) -> u32 {
        let s = self.seq.get().wrapping_add(1);
        self.seq.set(s);
        s
    }

    fn recv(&self, buf: &mut Vec<u8>, context: &str) -> Result<()> {
        buf.clear();
        loop {
            match self.socket().recv(buf, libc::MSG_TRUNC) {
                Ok(n) if n > buf.len() => {
                    return Err(Error::Protocol(format!(
                        "{context}: netlink message of {n} bytes truncated"
                    )))
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("{context}: receive"), e)),
            }
        }
    }

    /// Applies `batch` atomically: either every change happens or none does. An empty batch is a
    /// no-op. Errors name the failing change and carry the kernel's explanation.
    pub fn commit(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(
            256 + batch
                .messages
                .iter()
                .map(|m| m.attrs.len() + 20)
                .sum::<usize>(),
        );
        let begin = self.next_seq();
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let first = begin.wrapping_add(1);
        let mut last = begin;
        for (i, m) in batch.messages.iter().enumerate() {
            last = self.next_seq();
            // Errors are reported for every failing message regardless of NLM_F_ACK; asking for
            // an ack only on the last one keeps the answer small and tells us when to stop
            // reading (the kernel delivers answers in message order).
            let ack = if i + 1 == batch.messages.len() {
                NLM_F_ACK
            } else {
                0
            };
            nlmsg(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | m.kind,
                NLM_F_REQUEST | ack | m.flags,
                last,
                m.family,
                0,
                &m.attrs,
            );
        }
        let end = self.next_seq();
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        if buf.len() > LARGE_BATCH {
            // A transaction must go in one datagram, which the default socket send buffer
            // (wmem_default, ~208 KiB) caps. Root can raise it past wmem_max; if that fails the
            // kernel's EMSGSIZE below explains it.
            set_buffer(self.socket(), libc::SO_SNDBUFFORCE, buf.len() * 2);
        }
        if batch.messages.iter().any(|m| m.deletes()) {
            self.deleted.set(true);
        }
        self.socket()
            .send(&buf, 0)
            .map_err(|e| Error::io("nftables: send batch", e))?;

        let describe = |seq: u32| -> String {
            let idx = seq.wrapping_sub(first) as usize;
            batch
                .messages
                .get(idx)
                .map(|m| m.what.clone())
                .unwrap_or_else(|| "commit transaction".to_string())
        };
        let mut first_error: Option<Error> = None;
        let mut rbuf = Vec::with_capacity(RECV_BUF);
        loop {
            self.recv(&mut rbuf, "nftables: commit")?;
            let mut done = false;
            for msg in split_messages(&rbuf)? {
                // Anything else is a leftover of an earlier, abandoned request on this socket.
                let ours = msg.seq.wrapping_sub(begin) <= end.wrapping_sub(begin);
                if msg.kind != NLMSG_ERROR || !ours {
                    continue;
                }
                let (code, text) = decode_error(&msg)?;
                if code != 0 && first_error.is_none() {
                    first_error = Some(Error::Kernel {
                        context: format!("nftables: {}", describe(msg.seq)),
                        errno: -code,
                        message: text,
                    });
                }
                // The last message's answer ends the batch's answers; an error on BATCH_BEGIN
                // means the batch was refused as a whole and nothing else will come.
                if msg.seq == last || (msg.seq == begin && code != 0) {
                    done = true;
                }
            }
            if done {
                break;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs a dump request and hands every answer message's attributes to `f`. Retries when the
    /// kernel flags the dump as interrupted by a concurrent change. ENOENT (no such table or
    /// chain) yields nothing.
    fn dump<T>(
        &self,
        kind: u16,
        family: u8,
        attrs: &[u8],
        context: &str,
        mut f: impl FnMut(u8, &[Attr<'_>]) -> Result<Option<T>>,
    ) -> Result<Vec<T>> {
        'retry: for _ in 0..DUMP_RETRIES {
            let seq = self.next_seq();
            let mut req = Vec::with_capacity(64 + attrs.len());
            nlmsg(
                &mut req,
                (NFNL_SUBSYS_NFTABLES << 8) | kind,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                family,
                0,
                attrs,
            );
            self.socket()
                .send(&req, 0)
                .map_err(|e| Error::io(format!("{context}: send"), e))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            let mut rbuf = Vec::with_capacity(RECV_BUF);
            loop {
                self.recv(&mut rbuf, context)?;
                for msg in split_messages(&rbuf)? {
                    if msg.seq != seq {
                        continue; // a late answer to an earlier request
                    }
                    if msg.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match msg.kind {
                        NLMSG_DONE => {
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(out);
                        }
                        NLMSG_ERROR => {
                            let (code, text) = decode_error(&msg)?;
                            if code == 0 {
                                continue;
                            }
                            if -code == libc::ENOENT {
                                return Ok(Vec::new());
                            }
                            if -code == libc::EINTR || -code == libc::EAGAIN {
                                continue 'retry;
                            }
                            return Err(Error::Kernel {
                                context: context.to_string(),
                                errno: -code,
                                message: text,
                            });
                        }
                        _ => {
                            if msg.payload.len() < 4 {
                                return Err(Error::Protocol(format!(
                                    "{context}: short nfnetlink message"
                                )));
                            }
                            let fam = msg.payload[0];
                            let attrs = attr::parse(&msg.payload[4..])?;
                            if let Some(item) = f(fam, &attrs)? {
                                out.push(item);
                            }
                        }
                    }
                }
            }
        }
        Err(Error::Protocol(format!(
            "{context}: dump interrupted by concurrent changes {DUMP_RETRIES} times"
        )))
    }

    /// Tables of `family`.
    pub fn list_tables(&self, family: Family) -> Result<Vec<TableInfo>> {
        let context = format!("nftables: list tables {family}");
        self.dump(
            NFT_MSG_GETTABLE,
            family.nfproto(),
            &[],
            &context,
            |fam, attrs| {
                let Some(family) = Family::from_nfproto(fam) else {
                    return Ok(None);
                };
                Ok(attr::find(attrs, NFTA_TABLE_NAME).map(|a| TableInfo {
                    family,
                    name: a.string(),
                }))
            },
        )
    }

    /// Chains of `family`, optionally only those of `table`.
    pub fn list_chains(&self, family: Family, table: Option<&str>) -> Result<Vec<ChainInfo>> {
        let context = format!("nftables: list chains {family} {}", table.unwrap_or("*"));
        let mut w = AttrWriter::new();
        if let Some(t) = table {
            w.str(NFTA_CHAIN_TABLE, t);
        }
        self.dump(
            NFT_MSG_GETCHAIN,
            family.nfproto(),
            &w.buf,
            &context,
            |fam, attrs| {
                let Some(family) = Family::from_nfproto(fam) else {
                    return Ok(None);
                };
                let table_name = attr::find(attrs, NFTA_CHAIN_TABLE)
                    .map(|a| a.string())
                    .unwrap_or_default();
                if table.is_some_and(|t| t != table_name) {
                    return Ok(None);
                }
                let mut info = ChainInfo {
                    family,
                    table: table_name,
                    name: attr::find(attrs, NFTA_CHAIN_NAME)
                        .map(|a| a.string())
                        .unwrap_or_default(),
                    handle: match attr::find(attrs, NFTA_CHAIN_HANDLE) {
                        Some(a) => a.be64()?,
                        None => 0,
                    },
                    hook: None,
                    priority: None,
                    chain_type: attr::find(attrs, NFTA_CHAIN_TYPE).map(|a| a.string()),
                };
                if let Some(hook) = attr::find(attrs, NFTA_CHAIN_HOOK) {
                    let inner = hook.nested()?;
                    if let Some(n) = attr::find(&inner, NFTA_HOOK_HOOKNUM) {
                        info.hook = Hook::from_number(n.be32()?);
                    }
                    if let Some(p) = attr::find(&inner, NFTA_HOOK_PRIORITY) {
                        info.priority = Some(p.be32()? as i32);
                    }
                }
                Ok(Some(info))
            },
        )
    }

    /// Rules of one chain, in order, with handles and comments. A missing table or chain yields
    /// an empty list.
    pub fn list_rules(&self, family: Family, table: &str, chain: &str) -> Result<Vec<RuleInfo>> {
        let context = format!("nftables: list rules of {family} {table} {chain}");
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
        self.dump(
            NFT_MSG_GETRULE,
            family.nfproto(),
            &w.buf,
            &context,
            |fam, attrs| {
                let Some(family) = Family::from_nfproto(fam) else {
                    return Ok(None);
                };
                let rule_table = attr::find(attrs, NFTA_RULE_TABLE)
                    .map(|a| a.string())
                    .unwrap_or_default();
                let rule_chain = attr::find(attrs, NFTA_RULE_CHAIN)
                    .map(|a| a.string())
                    .unwrap_or_default();
                // Old kernels ignore the dump filter; filter here too.
                if rule_table != table || rule_chain != chain {
                    return Ok(None);
                }
                let handle = attr::find(attrs, NFTA_RULE_HANDLE)
                    .ok_or_else(|| Error::Protocol(format!("{context}: rule without handle")))?
                    .be64()?;
                let mut exprs = Vec::new();
                if let Some(list) = attr::find(attrs, NFTA_RULE_EXPRESSIONS) {
                    for elem in list.nested()? {
                        let inner = elem.nested()?;
                        let name = attr::find(&inner, NFTA_EXPR_NAME)
                            .map(|a| a.string())
                            .unwrap_or_default();
                        let data = attr::find(&inner, NFTA_EXPR_DATA)
                            .map(|a| a.value.to_vec())
                            .unwrap_or_default();
                        exprs.push(Expr::from_raw(name, data));
                    }
                }
                Ok(Some(RuleInfo {
                    family,
                    table: rule_table,
                    chain: rule_chain,
                    handle,
                    comment: attr::find(attrs, NFTA_RULE_USERDATA)
                        .and_then(|a| comment_from_userdata(a.value)),
                    exprs,
                }))
            },
        )
    }
}

fn set_buffer(socket: &Socket, option: libc::c_int, size: usize) {
    use std::os::fd::AsRawFd;
    let size = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt on a socket we own with an int-sized option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a socket we own with a properly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "nftables: set receive timeout",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Opens a socket in the current namespace and commits `batch` (one transaction).
pub fn commit(batch: &Batch) -> Result<()> {
    Nft::open()?.commit(batch)
}
