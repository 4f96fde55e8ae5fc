//! The `NETLINK_NETFILTER` socket: commits batches with one `sendmsg` and reads the kernel's
//! answers; dumps tables, chains and rules.

use std::cell::{Cell, RefCell, RefMut};
use std::io;
use std::ops::ControlFlow;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use twill_kernel::nl::{self, Reply};

use super::attr::{self, Attr, AttrWriter};
use super::batch::{comment_from_userdata, Batch};
use super::expr::Expr;
use super::sys::*;
use super::{park, Family, Hook};
use crate::error::{Error, Result};

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
    socket: Option<RefCell<nl::Socket>>,
    deleted: Cell<bool>,
}

impl Drop for Nft {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            if self.deleted.get() {
                park::park(socket.into_inner().into_inner());
            }
            // Otherwise the socket closes here: nothing of ours awaits a grace period.
        }
    }
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seq = self
            .socket
            .as_ref()
            .and_then(|s| s.try_borrow().ok().map(|s| s.seq()));
        f.debug_struct("Nft").field("seq", &seq).finish()
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

/// Maps a failure of the shared netlink loop: a malformed or truncated answer is a protocol
/// error, anything else a failed system call.
fn loop_error(context: &str, what: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::InvalidData {
        Error::Protocol(format!("{context}: {e}"))
    } else {
        Error::io(format!("{context}: {what}"), e)
    }
}

/// The string value of attribute `kind`, empty when absent.
fn string_attr(attrs: &[Attr<'_>], kind: u16) -> String {
    attr::find(attrs, kind)
        .map(|a| a.string())
        .unwrap_or_default()
}

impl Nft {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Nft> {
        let socket = nl::Socket::open(NETLINK_NETFILTER)
            .map_err(|e| Error::io("nftables: open netlink socket", e))?;
        set_recv_timeout(socket.inner(), RECV_TIMEOUT)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Nft {
            socket: Some(RefCell::new(socket.with_seq(seed))),
            deleted: Cell::new(false),
        })
    }

    fn socket(&self) -> RefMut<'_, nl::Socket> {
        // Only `drop` takes the socket out; requests never nest.
        self.socket
            .as_ref()
            .expect("nft socket present until drop")
            .borrow_mut()
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
        let mut socket = self.socket();
        let begin = socket.next_seq();
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
            last = socket.next_seq();
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
        let end = socket.next_seq();
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
            set_buffer(socket.inner(), buf.len() * 2);
        }
        if batch.messages.iter().any(|m| m.deletes()) {
            self.deleted.set(true);
        }

        let describe = |seq: u32| -> String {
            let idx = seq.wrapping_sub(first) as usize;
            batch
                .messages
                .get(idx)
                .map(|m| m.what.clone())
                .unwrap_or_else(|| "commit transaction".to_string())
        };
        let mut first_error: Option<Error> = None;
        socket.exchange(
            &buf,
            begin,
            end,
            |what, e| loop_error("nftables: commit", what, e),
            |frame, reply| {
                let failed = match reply {
                    Reply::Ack => false,
                    Reply::Error { errno, detail } => {
                        if first_error.is_none() {
                            first_error = Some(Error::Kernel {
                                context: format!("nftables: {}", describe(frame.seq)),
                                errno,
                                message: detail,
                            });
                        }
                        true
                    }
                    _ => return Ok(ControlFlow::Continue(())),
                };
                // The last message's answer ends the batch's answers; an error on BATCH_BEGIN
                // means the batch was refused as a whole and nothing else will come.
                if frame.seq == last || (frame.seq == begin && failed) {
                    Ok(ControlFlow::Break(()))
                } else {
                    Ok(ControlFlow::Continue(()))
                }
            },
        )?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs a dump request and hands every answer message's family and attributes to `f`
    /// (messages of families this crate does not know are skipped). Retries when the kernel
    /// flags the dump as interrupted by a concurrent change. ENOENT (no such table or chain)
    /// yields nothing.
    fn dump<T>(
        &self,
        kind: u16,
        family: u8,
        attrs: &[u8],
        context: &str,
        mut f: impl FnMut(Family, &[Attr<'_>]) -> Result<Option<T>>,
    ) -> Result<Vec<T>> {
        let mut socket = self.socket();
        for _ in 0..DUMP_RETRIES {
            let seq = socket.next_seq();
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
            let mut out = Vec::new();
            let mut interrupted = false;
            // `None`: start again.
            let result = socket.exchange(
                &req,
                seq,
                seq,
                |what, e| loop_error(context, what, e),
                |frame, reply| {
                    if frame.dump_interrupted() {
                        interrupted = true;
                    }
                    match reply {
                        Reply::Done { .. } if interrupted => Ok(ControlFlow::Break(None)),
                        Reply::Done { .. } => {
                            Ok(ControlFlow::Break(Some(std::mem::take(&mut out))))
                        }
                        Reply::Ack => Ok(ControlFlow::Continue(())),
                        Reply::Error { errno, .. } if errno == libc::ENOENT => {
                            Ok(ControlFlow::Break(Some(Vec::new())))
                        }
                        Reply::Error { errno, .. }
                            if errno == libc::EINTR || errno == libc::EAGAIN =>
                        {
                            Ok(ControlFlow::Break(None))
                        }
                        Reply::Error { errno, detail } => Err(Error::Kernel {
                            context: context.to_string(),
                            errno,
                            message: detail,
                        }),
                        Reply::Message => {
                            let payload = frame.payload();
                            if payload.len() < 4 {
                                return Err(Error::Protocol(format!(
                                    "{context}: short nfnetlink message"
                                )));
                            }
                            let Some(family) = Family::from_nfproto(payload[0]) else {
                                return Ok(ControlFlow::Continue(()));
                            };
                            let attrs = attr::parse(&payload[4..])?;
                            if let Some(item) = f(family, &attrs)? {
                                out.push(item);
                            }
                            Ok(ControlFlow::Continue(()))
                        }
                    }
                },
            )?;
            if let Some(items) = result {
                return Ok(items);
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
            |family, attrs| {
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
            |family, attrs| {
                let table_name = string_attr(attrs, NFTA_CHAIN_TABLE);
                if table.is_some_and(|t| t != table_name) {
                    return Ok(None);
                }
                let mut info = ChainInfo {
                    family,
                    table: table_name,
                    name: string_attr(attrs, NFTA_CHAIN_NAME),
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
            |family, attrs| {
                let rule_table = string_attr(attrs, NFTA_RULE_TABLE);
                let rule_chain = string_attr(attrs, NFTA_RULE_CHAIN);
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
                        let name = string_attr(&inner, NFTA_EXPR_NAME);
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

fn set_buffer(socket: &Socket, size: usize) {
    let _ = setsockopt(socket, sockopt::SndBufForce, &size.min(i32::MAX as usize));
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> Result<()> {
    let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    setsockopt(socket, sockopt::ReceiveTimeout, &tv)
        .map_err(|e| Error::io("nftables: set receive timeout", e.into()))
}

/// Opens a socket in the current namespace and commits `batch` (one transaction).
pub fn commit(batch: &Batch) -> Result<()> {
    Nft::open()?.commit(batch)
}
