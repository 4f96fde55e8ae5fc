//! Ranges and range sets (docs/cni-spec-notes.md §11.1, §11.3): one `Range` is a contiguous, inclusive span of a subnet
//! with its gateway; a `RangeSet` is the pool of same-family ranges one address of a result is drawn from.
//! Iteration is round-robin as the reference's `RangeIter`: start after the last reserved address, walk to the
//! range's end, continue with the next range of the set, wrap around, skip each range's gateway, stop when
//! every address was offered once.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a range or range set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number, for arithmetic that works the same for both families.
pub fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The address `n` of `family`. `n` must fit the family (callers stay inside a subnet of that family).
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// One validated range: `start..=end` inside `subnet`, with the gateway handed out in results and never
/// allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// The keys of one range as written in the config, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSpec {
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

fn parse_addr(field: &str, s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("{field}: invalid IP address {s:?}"))
}

impl Range {
    /// Validate one range (the reference's `Range.Canonicalize` plus the checks it misses: start after end,
    /// family mismatches). Errors name the field under `path` ("ipam.ranges[0][1].rangeStart: ...").
    pub fn from_spec(path: &str, spec: &RangeSpec) -> Result<Range, String> {
        let field = |k: &str| format!("{path}.{k}");
        let subnet_text = spec
            .subnet
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{}: missing (every range needs a subnet)", field("subnet")))?;
        let subnet: IpNet = subnet_text
            .trim()
            .parse()
            .map_err(|_| format!("{}: invalid CIDR {subnet_text:?}", field("subnet")))?;
        if subnet.trunc() != subnet {
            return Err(format!(
                "{}: {subnet} has host bits set; for a prefix length of {} the network address is {}",
                field("subnet"),
                subnet.prefix_len(),
                subnet.network()
            ));
        }
        // A /31 or /32 (v6: /127, /128) leaves nothing once network and broadcast are excluded.
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(format!(
                "{}: network {subnet} is too small to allocate from",
                field("subnet")
            ));
        }
        let family = Family::of(&subnet.addr());
        let in_family = |k: &str, ip: IpAddr| -> Result<IpAddr, String> {
            if Family::of(&ip) != family {
                return Err(format!(
                    "{}: {ip} is not an {family} address like subnet {subnet}",
                    field(k)
                ));
            }
            Ok(ip)
        };
        let network = to_u128(&subnet.network());
        let gateway = match spec.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => in_family("gateway", parse_addr(&field("gateway"), g)?)?,
            None => from_u128(family, network + 1),
        };
        let start = match spec.range_start.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let ip = in_family("rangeStart", parse_addr(&field("rangeStart"), s)?)?;
                if !subnet.contains(&ip) {
                    return Err(format!(
                        "{}: {ip} is not in network {subnet}",
                        field("rangeStart")
                    ));
                }
                ip
            }
            None => from_u128(family, network + 1),
        };
        let end = match spec.range_end.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let ip = in_family("rangeEnd", parse_addr(&field("rangeEnd"), s)?)?;
                if !subnet.contains(&ip) {
                    return Err(format!(
                        "{}: {ip} is not in network {subnet}",
                        field("rangeEnd")
                    ));
                }
                ip
            }
            // As the reference: v4 stops before the broadcast address, v6 uses the last address.
            None => {
                let last = to_u128(&subnet.broadcast());
                from_u128(family, if family == Family::V4 { last - 1 } else { last })
            }
        };
        if to_u128(&start) > to_u128(&end) {
            return Err(format!(
                "{}: rangeStart {start} is after rangeEnd {end}",
                field("rangeStart")
            ));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn family(&self) -> Family {
        Family::of(&self.start)
    }

    /// `ip` lies in `start..=end` (and so in the subnet).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && {
            let n = to_u128(ip);
            to_u128(&self.start) <= n && n <= to_u128(&self.end)
        }
    }

    /// Number of addresses in `start..=end` (saturating for a v6 range spanning all of u128).
    pub fn size(&self) -> u128 {
        (to_u128(&self.end) - to_u128(&self.start)).saturating_add(1)
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.family() == other.family()
            && to_u128(&self.start) <= to_u128(&other.end)
            && to_u128(&other.start) <= to_u128(&self.end)
    }

    /// `ip` with this range's prefix length, as it appears in a result.
    pub fn address(&self, ip: IpAddr) -> IpNet {
        // The prefix length comes from a valid subnet of the same family, so this cannot fail.
        IpNet::new(ip, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

/// A validated, non-empty set of disjoint ranges of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    /// Validate a set: non-empty, one family, no overlaps (errors name the field under `path`).
    pub fn from_specs(path: &str, specs: &[RangeSpec]) -> Result<RangeSet, String> {
        if specs.is_empty() {
            return Err(format!("{path}: empty range set"));
        }
        let ranges = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Range::from_spec(&format!("{path}[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        RangeSet::new(path, ranges)
    }

    pub fn new(path: &str, ranges: Vec<Range>) -> Result<RangeSet, String> {
        let Some(first) = ranges.first() else {
            return Err(format!("{path}: empty range set"));
        };
        let family = first.family();
        for (i, r) in ranges.iter().enumerate() {
            if r.family() != family {
                return Err(format!(
                    "{path}[{i}].subnet: mixed address families in one range set ({} is {}, {} is {family})",
                    r.subnet,
                    r.family(),
                    first.subnet
                ));
            }
            for (j, other) in ranges.iter().enumerate().skip(i + 1) {
                if r.overlaps(other) {
                    return Err(format!(
                        "{path}[{j}]: range {}-{} overlaps with {path}[{i}] {}-{}",
                        other.start, other.end, r.start, r.end
                    ));
                }
            }
        }
        Ok(RangeSet { ranges })
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn family(&self) -> Family {
        self.ranges[0].family()
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.range_of(ip).is_some()
    }

    /// The range holding `ip`.
    pub fn range_of(&self, ip: &IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// Addresses this set can hand out: every address of every range except the range's own gateway.
    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .map(|r| r.size() - u128::from(r.contains(&r.gateway)))
            .fold(0u128, u128::saturating_add)
    }

    /// Candidates in allocation order: after `last_reserved` when it lies in the set, else from the first
    /// range's start. Each address of the set is offered at most once; gateways never.
    pub fn iter_from(&self, last_reserved: Option<IpAddr>) -> RangeIter<'_> {
        let (range, cur, first) = match last_reserved.and_then(|ip| {
            self.ranges
                .iter()
                .position(|r| r.contains(&ip))
                .map(|i| (i, ip))
        }) {
            // Start one past the last reservation; it is itself offered last.
            Some((i, ip)) => (i, to_u128(&ip), false),
            None => (0, to_u128(&self.ranges[0].start), true),
        };
        RangeIter {
            set: self,
            range,
            cur,
            pending_first: first,
            remaining: self
                .ranges
                .iter()
                .map(Range::size)
                .fold(0, u128::saturating_add),
        }
    }
}

/// Round-robin iterator over a range set (see [`RangeSet::iter_from`]). Yields `(range index, address)`.
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    range: usize,
    cur: u128,
    /// `cur` itself has not been yielded yet (fresh start at the first range's start).
    pending_first: bool,
    /// Addresses not yet stepped over, gateways included.
    remaining: u128,
}

impl RangeIter<'_> {
    fn advance(&mut self) {
        let r = &self.set.ranges[self.range];
        if self.cur >= to_u128(&r.end) {
            self.range = (self.range + 1) % self.set.ranges.len();
            self.cur = to_u128(&self.set.ranges[self.range].start);
        } else {
            self.cur += 1;
        }
    }
}

impl Iterator for RangeIter<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            if self.pending_first {
                self.pending_first = false;
            } else {
                self.advance();
            }
            self.remaining -= 1;
            let r = &self.set.ranges[self.range];
            let ip = from_u128(r.family(), self.cur);
            if ip != r.gateway {
                return Some((self.range, ip));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> RangeSpec {
        RangeSpec {
            subnet: Some(subnet.into()),
            range_start: start.map(Into::into),
            range_end: end.map(Into::into),
            gateway: gw.map(Into::into),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(specs: &[RangeSpec]) -> RangeSet {
        RangeSet::from_specs("ipam.ranges[0]", specs).unwrap()
    }

    #[test]
    fn defaults_follow_the_reference() {
        let r = Range::from_spec("r", &spec("10.0.0.0/24", None, None, None)).unwrap();
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.0.0.1"), ip("10.0.0.254"), ip("10.0.0.1"))
        );
        let r = Range::from_spec("r", &spec("fd00::/120", None, None, None)).unwrap();
        assert_eq!((r.start, r.end), (ip("fd00::1"), ip("fd00::ff")));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (
                spec("10.0.0.1/24", None, None, None),
                "r.subnet",
                "host bits",
            ),
            (
                spec("10.0.0.0/31", None, None, None),
                "r.subnet",
                "too small",
            ),
            (
                spec("fd00::/127", None, None, None),
                "r.subnet",
                "too small",
            ),
            (
                spec("10.0.0/24", None, None, None),
                "r.subnet",
                "invalid CIDR",
            ),
            (
                spec("10.0.0.0/24", Some("10.0.1.5"), None, None),
                "r.rangeStart",
                "not in network",
            ),
            (
                spec("10.0.0.0/24", None, Some("10.0.1.5"), None),
                "r.rangeEnd",
                "not in network",
            ),
            (
                spec("10.0.0.0/24", Some("10.0.0.9"), Some("10.0.0.5"), None),
                "r.rangeStart",
                "after",
            ),
            (
                spec("10.0.0.0/24", Some("10.0.0.x"), None, None),
                "r.rangeStart",
                "invalid IP",
            ),
            (
                spec("10.0.0.0/24", None, None, Some("fd00::1")),
                "r.gateway",
                "not an IPv4",
            ),
        ];
        for (s, field, what) in cases {
            let e = Range::from_spec("r", &s).unwrap_err();
            assert!(e.starts_with(field) && e.contains(what), "{s:?}: {e}");
        }
        let missing = Range::from_spec("r", &RangeSpec::default()).unwrap_err();
        assert!(missing.starts_with("r.subnet"), "{missing}");
    }

    #[test]
    fn sets_reject_mixed_families_and_overlaps() {
        let e = RangeSet::from_specs(
            "s",
            &[
                spec("10.0.0.0/24", None, None, None),
                spec("fd00::/64", None, None, None),
            ],
        )
        .unwrap_err();
        assert!(e.contains("s[1].subnet") && e.contains("mixed"), "{e}");
        let e = RangeSet::from_specs(
            "s",
            &[
                spec("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.20"), None),
                spec("10.0.0.0/24", Some("10.0.0.20"), Some("10.0.0.30"), None),
            ],
        )
        .unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        // Disjoint ranges of one subnet are fine.
        set(&[
            spec("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.19"), None),
            spec("10.0.0.0/24", Some("10.0.0.20"), Some("10.0.0.30"), None),
        ]);
    }

    #[test]
    fn iteration_skips_the_gateway_and_wraps_across_ranges() {
        let s = set(&[
            spec("10.0.0.0/29", None, None, None),
            spec("10.1.0.0/30", None, None, Some("10.1.0.2")),
        ]);
        let all: Vec<IpAddr> = s.iter_from(None).map(|(_, a)| a).collect();
        let want: Vec<IpAddr> = [
            "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.1.0.1",
        ]
        .iter()
        .map(|a| ip(a))
        .collect();
        assert_eq!(all, want);
        // Round-robin: after 10.0.0.6 comes the second range, then wrap to the first.
        let from: Vec<IpAddr> = s.iter_from(Some(ip("10.0.0.6"))).map(|(_, a)| a).collect();
        assert_eq!(from[0], ip("10.1.0.1"));
        assert_eq!(from[1], ip("10.0.0.2"));
        assert_eq!(
            *from.last().unwrap(),
            ip("10.0.0.6"),
            "the last reserved address is offered last"
        );
        assert_eq!(from.len(), 6);
        assert_eq!(s.capacity(), 6);
        // A last reservation outside the set restarts at the first range.
        assert_eq!(
            s.iter_from(Some(ip("192.168.0.1"))).next().unwrap().1,
            ip("10.0.0.2")
        );
    }

    #[test]
    fn iteration_of_v6_ranges() {
        let s = set(&[spec("fd00::/126", None, None, None)]);
        let all: Vec<IpAddr> = s.iter_from(None).map(|(_, a)| a).collect();
        assert_eq!(all, vec![ip("fd00::2"), ip("fd00::3")]);
        let s = set(&[spec(
            "fd00::/64",
            Some("fd00::ffff:fffe"),
            Some("fd00::1:0:1"),
            None,
        )]);
        let all: Vec<IpAddr> = s
            .iter_from(Some(ip("fd00::1:0:0")))
            .map(|(_, a)| a)
            .collect();
        assert_eq!(
            all,
            vec![
                ip("fd00::1:0:1"),
                ip("fd00::ffff:fffe"),
                ip("fd00::ffff:ffff"),
                ip("fd00::1:0:0")
            ]
        );
    }

    fn arb_set() -> impl Strategy<Value = RangeSet> {
        // Up to 4 disjoint v4 ranges cut out of 10.0.0.0/16 with random gateways.
        (
            proptest::collection::btree_set(0u32..4000, 2..9),
            any::<bool>(),
        )
            .prop_map(|(cuts, v6)| {
                let cuts: Vec<u32> = cuts.into_iter().collect();
                let ranges = cuts
                    .chunks(2)
                    .filter(|c| c.len() == 2)
                    .map(|c| {
                        let (subnet, base): (IpNet, u128) = if v6 {
                            ("fd00::/112".parse().unwrap(), to_u128(&ip("fd00::")))
                        } else {
                            ("10.0.0.0/16".parse().unwrap(), to_u128(&ip("10.0.0.0")))
                        };
                        let fam = Family::of(&subnet.addr());
                        Range {
                            subnet,
                            start: from_u128(fam, base + 1 + u128::from(c[0])),
                            end: from_u128(fam, base + 1 + u128::from(c[1])),
                            gateway: from_u128(fam, base + 1 + u128::from((c[0] + c[1]) / 2)),
                        }
                    })
                    .collect();
                RangeSet::new("p", ranges).unwrap()
            })
    }

    proptest! {
        /// Validation accepts exactly the ranges that make sense: network address, at least two usable
        /// addresses, start and end inside the subnet, start not after end.
        #[test]
        fn validation_accepts_exactly_the_sane_v4_ranges(
            base in any::<u32>(), prefix in 8u8..=32, start in proptest::option::of(0u64..300), end in proptest::option::of(0u64..300), host_bits in any::<bool>()
        ) {
            let size = 1u64 << (32 - prefix);
            let network = if prefix == 32 { base } else { base & !((size as u32).wrapping_sub(1)) };
            let subnet_addr = if host_bits && size > 1 { network | 1 } else { network };
            let at = |off: u64| Ipv4Addr::from(network.wrapping_add(off as u32)).to_string();
            let s = RangeSpec {
                subnet: Some(format!("{}/{prefix}", Ipv4Addr::from(subnet_addr))),
                range_start: start.map(at),
                range_end: end.map(at),
                gateway: None,
            };
            let start_off = start.unwrap_or(1);
            let end_off = end.unwrap_or(size.saturating_sub(2));
            let sane = !(host_bits && size > 1)
                && prefix <= 30
                && start_off < size && end_off < size
                && network.checked_add(start_off as u32).is_some() && network.checked_add(end_off as u32).is_some()
                && start_off <= end_off;
            let got = Range::from_spec("r", &s);
            prop_assert_eq!(got.is_ok(), sane, "{:?}: {:?}", s, got);
            if let Ok(r) = got {
                prop_assert!(r.subnet.contains(&r.start) && r.subnet.contains(&r.end));
                prop_assert!(to_u128(&r.start) <= to_u128(&r.end));
            }
        }

        #[test]
        fn iteration_offers_every_non_gateway_address_exactly_once(s in arb_set(), pick in any::<u64>(), from_last in any::<bool>()) {
            let all: Vec<IpAddr> = s.iter_from(None).map(|(_, a)| a).collect();
            prop_assert_eq!(all.len() as u128, s.capacity());
            let mut seen = std::collections::HashSet::new();
            for a in &all {
                prop_assert!(seen.insert(*a), "{} offered twice", a);
                prop_assert!(s.contains(a));
                prop_assert!(s.ranges().iter().all(|r| r.gateway != *a));
            }
            let last = all[(pick % all.len() as u64) as usize];
            let rr: Vec<IpAddr> = s.iter_from(if from_last { Some(last) } else { None }).map(|(_, a)| a).collect();
            let mut sorted_rr = rr.clone();
            sorted_rr.sort();
            let mut sorted_all = all.clone();
            sorted_all.sort();
            prop_assert_eq!(sorted_rr, sorted_all);
            if from_last {
                prop_assert_eq!(*rr.last().unwrap(), last);
                // The successor in the fresh order is offered first (wrapping around the set).
                let pos = all.iter().position(|a| *a == last).unwrap();
                prop_assert_eq!(rr[0], all[(pos + 1) % all.len()]);
            }
        }
    }
}
