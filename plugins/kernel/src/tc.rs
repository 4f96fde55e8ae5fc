//! Traffic control: the qdiscs and filters a bandwidth limit is made of. A token bucket (`tbf`) as a
//! device's root qdisc, the `ingress` qdisc, and a match-all `u32` filter on it whose `mirred` action
//! redirects every received packet to another device (an ifb, where it is shaped on the way out).
//!
//! netlink-packet-route knows the u32 filter and mirred action but not tbf, whose options are built
//! and read here from the kernel's `struct tc_tbf_qopt`.

use netlink_packet_core::{DefaultNla, Nla, NlasIterator, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

pub use netlink_packet_route::tc::TcHandle;

use crate::error::Result;
use crate::handle::Handle;

/// `TCA_TBF_PARMS` and `TCA_TBF_RATE64` (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
/// `sizeof(struct tc_ratespec)` and `sizeof(struct tc_tbf_qopt)`.
const RATESPEC_LEN: usize = 12;
const TBF_QOPT_LEN: usize = 2 * RATESPEC_LEN + 12;
/// `ETH_P_ALL`, which the filter header carries in network byte order.
const ETH_P_ALL: u16 = 0x0003;

/// Token-bucket parameters in the kernel's units: rate in bytes per second, limit (queue) in bytes,
/// buffer (bucket) in scheduler ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate: u64,
    pub limit: u32,
    pub buffer: u32,
}

/// A qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub index: u32,
    pub kind: String,
    pub handle: TcHandle,
    pub parent: TcHandle,
    /// For a `tbf` qdisc, its parameters.
    pub tbf: Option<Tbf>,
}

/// The scheduler clock of `/proc/net/psched`: how many ticks make a microsecond (the factor tc and
/// the reference plugin use to turn times into `buffer` ticks).
pub fn ticks_per_usec() -> f64 {
    let text = std::fs::read_to_string("/proc/net/psched").unwrap_or_default();
    let vals: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| u64::from_str_radix(w, 16).ok())
        .collect();
    match vals.as_slice() {
        [t2us, us2t, clock_res, ..] if *us2t != 0 => {
            // A nanosecond-resolution clock reports ticks per microsecond in the first two words the
            // old way round; tc (and the reference) use the first word for both then.
            let t2us = if *clock_res == 1_000_000_000 {
                *us2t
            } else {
                *t2us
            };
            t2us as f64 / *us2t as f64 * (*clock_res as f64 / 1_000_000.0)
        }
        // Every kernel since 2.6.32 reports 1000 64 1000000000: 15.625 ticks per microsecond.
        _ => 15.625,
    }
}

fn tbf_options(tbf: &Tbf) -> Vec<TcOption> {
    let mut qopt = vec![0u8; TBF_QOPT_LEN];
    // struct tc_ratespec { u8 cell_log; u8 linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate; }
    let rate32 = u32::try_from(tbf.rate).unwrap_or(u32::MAX);
    qopt[8..12].copy_from_slice(&rate32.to_ne_bytes());
    // peakrate (bytes 12..24) stays zero: no peak rate.
    qopt[24..28].copy_from_slice(&tbf.limit.to_ne_bytes());
    qopt[28..32].copy_from_slice(&tbf.buffer.to_ne_bytes());
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt))];
    if tbf.rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            tbf.rate.to_ne_bytes().to_vec(),
        )));
    }
    opts
}

/// Reads tbf parameters out of a listed qdisc's `TCA_OPTIONS`, which the parser keeps as one opaque
/// attribute for kinds it does not know.
fn parse_tbf(attrs: &[TcAttribute]) -> Option<Tbf> {
    let opts = attrs.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    let mut nested = Vec::new();
    for o in opts {
        let mut buf = vec![0u8; o.value_len()];
        o.emit_value(&mut buf);
        nested.extend_from_slice(&buf);
    }
    let mut tbf = None;
    let mut rate64 = None;
    for nla in NlasIterator::new(nested.as_slice()).flatten() {
        let v = nla.value();
        match nla.kind() {
            TCA_TBF_PARMS if v.len() >= TBF_QOPT_LEN => {
                let word = |at: usize| u32::from_ne_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
                tbf = Some(Tbf {
                    rate: u64::from(word(8)),
                    limit: word(24),
                    buffer: word(28),
                });
            }
            TCA_TBF_RATE64 if v.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[..8]);
                rate64 = Some(u64::from_ne_bytes(b));
            }
            _ => {}
        }
    }
    let mut tbf = tbf?;
    if let Some(r) = rate64 {
        tbf.rate = r;
    }
    Some(tbf)
}

fn kind_of(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn tc_message(index: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg
}

impl Handle {
    /// `tc qdisc add dev <index> root handle <handle> tbf ...`.
    pub fn add_tbf_root(&self, index: u32, handle: TcHandle, tbf: &Tbf) -> Result<()> {
        let mut msg = tc_message(index, handle, TcHandle::ROOT);
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf_options(tbf)));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add tbf qdisc",
            || format!("on ifindex {index}"),
        )
        .map(|_| ())
    }

    /// `tc qdisc add dev <index> ingress` (handle `ffff:`).
    pub fn add_ingress_qdisc(&self, index: u32) -> Result<()> {
        let mut msg = tc_message(
            index,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            TcHandle::INGRESS,
        );
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add ingress qdisc",
            || format!("on ifindex {index}"),
        )
        .map(|_| ())
    }

    /// Deletes the qdisc at `parent` (root or ingress) of device `index`. Not found is
    /// [`crate::Error::is_not_found`] (or EINVAL on some kernels for an absent ingress qdisc).
    pub fn delete_qdisc(&self, index: u32, parent: TcHandle) -> Result<()> {
        let msg = tc_message(index, TcHandle::UNSPEC, parent);
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            0,
            "delete qdisc",
            || format!("{parent} on ifindex {index}"),
        )
        .map(|_| ())
    }

    /// The qdiscs of device `index`.
    pub fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>> {
        let msg = TcMessage::with_index(index as i32);
        let msgs = self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(msg),
            "list qdiscs",
            || format!("of ifindex {index}"),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => Some(q),
                _ => None,
            })
            .filter(|q| q.header.index == index as i32)
            .map(|q| Qdisc {
                index,
                kind: kind_of(&q.attributes),
                handle: q.header.handle,
                parent: q.header.parent,
                tbf: parse_tbf(&q.attributes),
            })
            .collect())
    }

    /// `tc filter add dev <index> parent <parent> protocol all prio <prio> u32 match u32 0 0
    /// classid <classid> action mirred egress redirect dev <target>`: every packet the qdisc
    /// `parent` sees is handed to `target`'s egress.
    pub fn add_redirect_filter(
        &self,
        index: u32,
        parent: TcHandle,
        prio: u16,
        classid: TcHandle,
        target: u32,
    ) -> Result<()> {
        let mut msg = tc_message(index, TcHandle::UNSPEC, parent);
        msg.header.info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL.to_be());
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = target;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        msg.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(classid)),
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add redirect filter",
            || format!("on ifindex {index} to ifindex {target}"),
        )
        .map(|_| ())
    }

    /// The devices the u32 filters under `parent` of device `index` redirect packets to.
    pub fn redirect_targets(&self, index: u32, parent: TcHandle) -> Result<Vec<u32>> {
        let msg = tc_message(index, TcHandle::UNSPEC, parent);
        let msgs = self.dump(
            RouteNetlinkMessage::GetTrafficFilter(msg),
            "list filters",
            || format!("of ifindex {index}"),
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                for o in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                        continue;
                    };
                    for act in actions {
                        for aa in &act.attributes {
                            let TcActionAttribute::Options(aopts) = aa else {
                                continue;
                            };
                            for ao in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao {
                                    out.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn tbf_options_round_trip() {
        let tbf = Tbf {
            rate: 125_000,
            limit: 3_125_000,
            buffer: 81_920_000,
        };
        let attrs = vec![
            TcAttribute::Kind("tbf".into()),
            TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(2, {
                let opts = tbf_options(&tbf);
                let mut buf = vec![0u8; opts.as_slice().buffer_len()];
                opts.as_slice().emit(&mut buf);
                buf
            }))]),
        ];
        assert_eq!(parse_tbf(&attrs), Some(tbf));
    }

    #[test]
    fn rates_above_32_bits_use_rate64() {
        let tbf = Tbf {
            rate: 10_000_000_000,
            limit: 1,
            buffer: 1,
        };
        assert_eq!(tbf_options(&tbf).len(), 2);
    }

    #[test]
    fn psched_clock_is_read() {
        assert!(ticks_per_usec() > 0.0);
    }
}
