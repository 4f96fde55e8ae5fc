//! Routes.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
};
use netlink_packet_route::RouteNetlinkMessage;

pub use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};

use crate::address::Family;
use crate::error::{Error, Result};
use crate::handle::Handle;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// A route: unicast unless made a [`blackhole`](Route::blackhole). Build with [`Route::new`] and the
/// builder methods; the default route is `0.0.0.0/0` or `::/0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output device index.
    pub oif: Option<u32>,
    /// `None` lets [`Handle::add_route`] choose as `ip route` does: link scope for a route without
    /// gateway, universe otherwise.
    pub scope: Option<RouteScope>,
    pub table: u32,
    /// Metric.
    pub priority: Option<u32>,
    /// Gateway is on the link even though no address covers it (flannel's `.0/32` scheme).
    pub onlink: bool,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub protocol: RouteProtocol,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Unicast, or blackhole (packets to `dst` are dropped); other kinds only as read back.
    pub kind: RouteType,
}

/// Builder methods that set one field each: `name(arg: Type) => field = value;`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty) => $field:ident = $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $arg: $ty) -> Route {
                self.$field = $value;
                self
            }
        )*
    };
}

impl Route {
    /// A route to `dst` in the main table with protocol `boot` (as `ip route add`).
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            scope: None,
            table: TABLE_MAIN,
            priority: None,
            onlink: false,
            mtu: None,
            advmss: None,
            protocol: RouteProtocol::Boot,
            src: None,
            kind: RouteType::Unicast,
        }
    }

    /// A route that drops what is sent to `dst` (`ip route add blackhole`).
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            kind: RouteType::BlackHole,
            ..Route::new(dst)
        }
    }

    /// The default route of the gateway's family via `gateway`.
    pub fn default_via(gateway: IpAddr) -> Route {
        let dst = match gateway {
            IpAddr::V4(_) => IpNet::V4(Default::default()),
            IpAddr::V6(_) => IpNet::V6(Default::default()),
        };
        Route::new(dst).via(gateway)
    }

    setters! {
        /// Routes through `gateway`.
        via(gateway: IpAddr) => gateway = Some(gateway);
        /// Leaves through device `oif`.
        dev(oif: u32) => oif = Some(oif);
        scope(scope: RouteScope) => scope = Some(scope);
        table(table: u32) => table = table;
        metric(priority: u32) => priority = Some(priority);
        mtu(mtu: u32) => mtu = Some(mtu);
        advmss(advmss: u32) => advmss = Some(advmss);
        protocol(protocol: RouteProtocol) => protocol = protocol;
        src(src: IpAddr) => src = Some(src);
    }

    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    fn describe(&self) -> String {
        let mut s = match self.kind {
            RouteType::BlackHole => format!("blackhole {}", self.dst),
            _ => self.dst.to_string(),
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev index {oif}"));
        }
        if self.table != TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        if let Some(p) = self.priority {
            s.push_str(&format!(" metric {p}"));
        }
        s
    }

    fn to_message(&self, deleting: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = self.family().to_af();
        h.destination_prefix_length = self.dst.prefix_len();
        h.kind = self.kind;
        h.protocol = self.protocol;
        h.scope = match (self.scope, deleting) {
            (Some(s), _) => s,
            // `ip route del` matches any scope.
            (None, true) => RouteScope::NoWhere,
            (None, false) if self.gateway.is_none() && self.kind == RouteType::Unicast => {
                RouteScope::Link
            }
            (None, false) => RouteScope::Universe,
        };
        if deleting {
            // As `ip route del`: protocol and (unless asked for another) type match any route.
            h.protocol = RouteProtocol::Unspec;
            if self.kind == RouteType::Unicast {
                h.kind = RouteType::Unspec;
            }
        }
        if self.table < 256 {
            h.table = self.table as u8;
        } else {
            h.table = RouteHeader::RT_TABLE_UNSPEC;
            msg.attributes.push(RouteAttribute::Table(self.table));
        }
        if self.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.addr(),
                )));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = self.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        if let Some(src) = self.src {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = self.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(advmss) = self.advmss {
            metrics.push(RouteMetric::Advmss(advmss));
        }
        if !metrics.is_empty() && !deleting {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        let h = &msg.header;
        let mut dst = None;
        let mut route = Route {
            dst: IpNet::V4(Default::default()),
            gateway: None,
            oif: None,
            scope: Some(h.scope),
            table: h.table as u32,
            priority: None,
            onlink: h.flags.contains(RouteFlags::Onlink),
            mtu: None,
            advmss: None,
            protocol: h.protocol,
            src: None,
            kind: h.kind,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => route.src = route_ip(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Priority(p) => route.priority = Some(*p),
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        match m {
                            RouteMetric::Mtu(v) => route.mtu = Some(*v),
                            RouteMetric::Advmss(v) => route.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let dst = match (dst, h.address_family) {
            (Some(ip), _) => ip,
            (None, netlink_packet_route::AddressFamily::Inet6) => {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            }
            (None, netlink_packet_route::AddressFamily::Inet) => {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            }
            _ => return None,
        };
        route.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
        Some(route)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Which routes to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFilter {
    pub family: Option<Family>,
    /// `None`: every table.
    pub table: Option<u32>,
    pub oif: Option<u32>,
}

impl Handle {
    /// Adds a route; an identical one already present is [`Error::is_exists`](crate::Error::is_exists).
    pub fn add_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route.to_message(false)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add route",
            || route.describe(),
        )
        .map(|_| ())
    }

    /// Adds or replaces the route with the same destination, table, (and for IPv6) metric.
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route.to_message(false)),
            NLM_F_CREATE | NLM_F_REPLACE,
            "replace route",
            || route.describe(),
        )
        .map(|_| ())
    }

    /// Deletes a route; fields left unset match anything. Not found is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn delete_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelRoute(route.to_message(true)),
            0,
            "delete route",
            || route.describe(),
        )
        .map(|_| ())
    }

    /// The route the kernel would use to reach `dst` (`ip route get`): its output device, gateway and
    /// preferred source. An unreachable destination is an error (ENETUNREACH).
    pub fn route_get(&self, dst: IpAddr) -> Result<Route> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = Family::of(&dst).to_af();
        msg.header.destination_prefix_length = match dst {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            0,
            "get route to",
            || dst.to_string(),
        )?;
        msgs.iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    "get route to",
                    dst.to_string(),
                    self.netns(),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "kernel sent no route"),
                )
            })
    }

    /// Unicast and blackhole routes matching `filter` (kernel-generated local/broadcast routes are
    /// left out).
    pub fn routes(&self, filter: RouteFilter) -> Result<Vec<Route>> {
        let families = match filter.family {
            Some(f) => vec![f],
            None => vec![Family::V4, Family::V6],
        };
        let mut out = Vec::new();
        for family in families {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family.to_af();
            // With strict checking the kernel dumps only the table and device asked for (a large table of
            // other routes is not copied to us); without it, it ignores them and the filter below applies.
            match filter.table {
                Some(t) if t < 256 => msg.header.table = t as u8,
                Some(t) => msg.attributes.push(RouteAttribute::Table(t)),
                None => {}
            }
            if let Some(oif) = filter.oif {
                msg.attributes.push(RouteAttribute::Oif(oif));
            }
            let msgs = match self.dump(
                RouteNetlinkMessage::GetRoute(msg),
                "list routes",
                String::new,
            ) {
                // A table that does not exist (in this family) has no routes.
                Err(e) if filter.table.is_some() && e.errno() == Some(libc::ENOENT) => continue,
                other => other?,
            };
            for m in msgs {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                let Some(route) = Route::from_message(&r) else {
                    continue;
                };
                if !matches!(route.kind, RouteType::Unicast | RouteType::BlackHole) {
                    continue;
                }
                if filter.table.is_some_and(|t| t != route.table)
                    || filter.oif.is_some_and(|o| Some(o) != route.oif)
                {
                    continue;
                }
                out.push(route);
            }
        }
        Ok(out)
    }
}
