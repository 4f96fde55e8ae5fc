//! DHCPv4 transactions of one client on one interface (RFC 2131 §4.4): DISCOVER/OFFER/REQUEST/ACK,
//! renewal, release. Messages are encoded and decoded by `dhcproto`; the transport is a UDP socket on
//! port 68 created inside the pod's namespace and bound to the pod's interface.
//!
//! Before the pod's address is configured a unicast reply to it would be dropped by the pod's kernel,
//! so every broadcast request sets the BROADCAST flag (RFC 2131 §4.1) and servers broadcast their
//! replies. A renewal is unicast from the configured address and answered by unicast.

use crate::options::LeaseOptions;
use crate::protocol::{LeaseFacts, LeaseRoute};
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::Ipv4Net;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use twill_kernel::NetNs;

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// Option 57: what we can receive (an Ethernet MTU), as the reference client says.
const MAX_MESSAGE_SIZE: u16 = 1500;
/// Without option 51 a lease lasts an hour (the reference's default).
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// The interface a client speaks on.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
}

/// An acknowledged lease: the ACK, who sent it and when.
#[derive(Debug, Clone)]
pub struct Ack {
    pub msg: v4::Message,
    pub server: Ipv4Addr,
    pub received: Instant,
}

impl Ack {
    pub fn address(&self) -> Ipv4Addr {
        self.msg.yiaddr()
    }

    fn opt(&self, code: OptionCode) -> Option<&DhcpOption> {
        self.msg.opts().get(code)
    }

    fn seconds(&self, code: OptionCode) -> Option<Duration> {
        match self.opt(code)? {
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s) => {
                Some(Duration::from_secs(u64::from(*s)))
            }
            _ => None,
        }
    }

    /// Lease time, T1 and T2 (RFC 2131 §4.4.5 defaults: T1 half the lease; T2 85% as the reference).
    pub fn times(&self) -> (Duration, Duration, Duration) {
        let lease = self
            .seconds(OptionCode::AddressLeaseTime)
            .unwrap_or(DEFAULT_LEASE);
        let t2 = self
            .seconds(OptionCode::Rebinding)
            .unwrap_or(lease * 85 / 100);
        let t1 = self.seconds(OptionCode::Renewal).unwrap_or(lease / 2);
        (lease, t1, t2)
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match self.opt(OptionCode::Router)? {
            DhcpOption::Router(r) => r.first().copied(),
            _ => None,
        }
    }

    /// The pod's view of the lease, as the reference builds it: the address with option 1's prefix,
    /// the first router, and routes from option 121 — which, when present, replaces option 33 and the
    /// router's default route (RFC 3442 §3) — or else option 33's classful routes and a default route
    /// via the router.
    pub fn facts(&self) -> Result<LeaseFacts, String> {
        let Some(DhcpOption::SubnetMask(mask)) = self.opt(OptionCode::SubnetMask) else {
            return Err("DHCP option Subnet Mask not found in DHCPACK".into());
        };
        let address = Ipv4Net::with_netmask(self.address(), *mask)
            .map_err(|_| format!("DHCPACK has an invalid subnet mask {mask}"))?;
        let gateway = self.gateway();
        let mut routes = Vec::new();
        if let Some(DhcpOption::ClasslessStaticRoute(list)) =
            self.opt(OptionCode::ClasslessStaticRoute)
        {
            if !list.is_empty() {
                for (dst, gw) in list {
                    routes.push(LeaseRoute {
                        dst: *dst,
                        gw: *gw,
                        link_scope: gw.is_unspecified(),
                    });
                }
                return Ok(LeaseFacts {
                    address,
                    gateway,
                    routes,
                });
            }
        }
        if let Some(DhcpOption::StaticRoutingTable(list)) = self.opt(OptionCode::StaticRoutingTable)
        {
            for (dst, gw) in list {
                routes.push(LeaseRoute {
                    dst: classful(*dst),
                    gw: *gw,
                    link_scope: false,
                });
            }
        }
        if let Some(gw) = gateway {
            routes.push(LeaseRoute {
                dst: Ipv4Net::default(),
                gw,
                link_scope: false,
            });
        }
        Ok(LeaseFacts {
            address,
            gateway,
            routes,
        })
    }
}

/// Option 33 destinations carry no mask: the address's class gives it (RFC 2132 §5.8).
fn classful(dst: Ipv4Addr) -> Ipv4Net {
    let prefix = match dst.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        192..=223 => 24,
        _ => 32,
    };
    Ipv4Net::new(dst, prefix).unwrap_or_else(|_| Ipv4Net::from(dst))
}

/// A UDP socket on port 68 inside `netns`, bound to `ifname`. Binding to the device lets clients of
/// several interfaces of one pod share the port, and keeps our traffic on the pod's interface.
pub fn open_socket(netns: &NetNs, ifname: &str) -> io::Result<UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let ifname = std::ffi::OsString::from(ifname);
    let fd: OwnedFd = netns
        .run(move || -> nix::Result<OwnedFd> {
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
            socket::setsockopt(&fd, sockopt::BindToDevice, &ifname)?;
            socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::new(0, 0, 0, 0, CLIENT_PORT),
            )?;
            Ok(fd)
        })
        .map_err(io::Error::from)?
        .map_err(io::Error::from)?;
    Ok(UdpSocket::from(fd))
}

/// Why a transaction failed.
#[derive(Debug)]
pub enum ExchangeError {
    Io(io::Error),
    /// No acceptable reply within the timeout.
    Timeout,
    /// The server refused the request.
    Nak(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Timeout => write!(f, "no reply from a DHCP server"),
            ExchangeError::Nak(m) if m.is_empty() => write!(f, "server rejected request with NAK"),
            ExchangeError::Nak(m) => write!(f, "server rejected request with NAK (msg: {m})"),
        }
    }
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

/// One client: an interface, its client identifier and the lease's options.
pub struct Client<'a> {
    pub socket: UdpSocket,
    pub iface: &'a Interface,
    pub client_id: &'a [u8],
    pub options: &'a LeaseOptions,
    pub timeout: Duration,
}

fn broadcast_dest() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)
}

fn server_of(msg: &v4::Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier)? {
        DhcpOption::ServerIdentifier(ip) => Some(*ip),
        _ => None,
    }
}

impl Client<'_> {
    fn message(&self, kind: MessageType, broadcast: bool) -> v4::Message {
        let mut msg = v4::Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.iface.mac,
        );
        if broadcast {
            msg.set_flags(v4::Flags::default().set_broadcast());
        }
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(self.client_id.to_vec()));
        if kind != MessageType::Release {
            opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
            if !self.options.request.is_empty() {
                opts.insert(DhcpOption::ParameterRequestList(
                    self.options
                        .request
                        .iter()
                        .map(|c| OptionCode::from(*c))
                        .collect(),
                ));
            }
            // After the client's own options, so a configured client identifier replaces ours.
            for (code, value) in &self.options.provide {
                opts.insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::from(*code),
                    value.clone(),
                )));
            }
        }
        msg
    }

    fn send(&self, msg: &v4::Message, dest: SocketAddrV4) -> io::Result<()> {
        let bytes = msg
            .to_vec()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.socket.send_to(&bytes, dest)?;
        Ok(())
    }

    /// Sends `msg` and returns the first reply to it of one of `kinds` (NAK always ends the wait).
    fn exchange(
        &self,
        msg: &v4::Message,
        dest: SocketAddrV4,
        kinds: &[MessageType],
        server: Option<Ipv4Addr>,
    ) -> Result<v4::Message, ExchangeError> {
        self.send(msg, dest)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ExchangeError::Timeout);
            }
            self.socket.set_read_timeout(Some(left))?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ExchangeError::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            // Anything that does not decode, or answers another transaction or client, is not ours.
            let Ok(reply) = v4::Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if reply.opcode() != v4::Opcode::BootReply
                || reply.xid() != msg.xid()
                || reply.chaddr().get(..6) != Some(&self.iface.mac[..])
            {
                continue;
            }
            if server.is_some() && server_of(&reply).is_some() && server_of(&reply) != server {
                continue;
            }
            match reply.opts().msg_type() {
                Some(MessageType::Nak) => {
                    let text = match reply.opts().get(OptionCode::Message) {
                        Some(DhcpOption::Message(m)) => m.clone(),
                        _ => String::new(),
                    };
                    return Err(ExchangeError::Nak(text));
                }
                Some(kind) if kinds.contains(&kind) => return Ok(reply),
                _ => continue,
            }
        }
    }

    fn acked(&self, reply: v4::Message, fallback_server: Option<Ipv4Addr>) -> Ack {
        let server = server_of(&reply)
            .or(fallback_server)
            .unwrap_or(Ipv4Addr::BROADCAST);
        Ack {
            msg: reply,
            server,
            received: Instant::now(),
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK (RFC 2131 §3.1); `wanted` asks for an address (option 50).
    pub fn acquire(&self, wanted: Option<Ipv4Addr>) -> Result<Ack, ExchangeError> {
        let mut discover = self.message(MessageType::Discover, true);
        if let Some(ip) = wanted {
            discover
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(ip));
        }
        let offer = self.exchange(&discover, broadcast_dest(), &[MessageType::Offer], None)?;
        let server = server_of(&offer);
        let mut request = self.message(MessageType::Request, true);
        request.set_xid(discover.xid());
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        if let Some(id) = server {
            request.opts_mut().insert(DhcpOption::ServerIdentifier(id));
        }
        let ack = self.exchange(&request, broadcast_dest(), &[MessageType::Ack], server)?;
        Ok(self.acked(ack, server))
    }

    /// RENEWING (RFC 2131 §4.4.5): a REQUEST from the leased address, unicast to the server that
    /// granted it.
    pub fn renew(&self, lease: &Ack) -> Result<Ack, ExchangeError> {
        let mut request = self.message(MessageType::Request, false);
        request.set_ciaddr(lease.address());
        let dest = if lease.server.is_broadcast() {
            broadcast_dest()
        } else {
            SocketAddrV4::new(lease.server, SERVER_PORT)
        };
        let ack = self.exchange(&request, dest, &[MessageType::Ack], None)?;
        Ok(self.acked(ack, Some(lease.server)))
    }

    /// DHCPRELEASE of the lease, to its server; broadcast when the pod has no route to it (its address
    /// may already be gone).
    pub fn release(&self, lease: &Ack) -> io::Result<()> {
        let mut msg = self.message(MessageType::Release, false);
        msg.set_ciaddr(lease.address());
        if !lease.server.is_broadcast() {
            msg.opts_mut()
                .insert(DhcpOption::ServerIdentifier(lease.server));
            if self
                .send(&msg, SocketAddrV4::new(lease.server, SERVER_PORT))
                .is_ok()
            {
                return Ok(());
            }
        }
        self.send(&msg, broadcast_dest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(opts: Vec<DhcpOption>) -> Ack {
        let mut msg = v4::Message::default();
        msg.set_yiaddr(Ipv4Addr::new(10, 0, 0, 5));
        for o in opts {
            msg.opts_mut().insert(o);
        }
        Ack {
            msg,
            server: Ipv4Addr::new(10, 0, 0, 1),
            received: Instant::now(),
        }
    }

    #[test]
    fn facts_need_a_subnet_mask() {
        let e = ack(vec![]).facts().unwrap_err();
        assert!(e.contains("Subnet Mask not found"), "{e}");
    }

    #[test]
    fn router_gives_gateway_and_default_route() {
        let f = ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]),
            DhcpOption::StaticRoutingTable(vec![(
                Ipv4Addr::new(172, 16, 0, 0),
                Ipv4Addr::new(10, 0, 0, 3),
            )]),
        ])
        .facts()
        .unwrap();
        assert_eq!(f.address.to_string(), "10.0.0.5/24");
        assert_eq!(f.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        let routes: Vec<String> = f
            .routes
            .iter()
            .map(|r| format!("{} {}", r.dst, r.gw))
            .collect();
        assert_eq!(routes, vec!["172.16.0.0/16 10.0.0.3", "0.0.0.0/0 10.0.0.1"]);
    }

    #[test]
    fn classless_routes_replace_static_routes_and_router() {
        let f = ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]),
            DhcpOption::ClasslessStaticRoute(vec![
                (
                    "192.168.0.0/16".parse().unwrap(),
                    Ipv4Addr::new(10, 0, 0, 9),
                ),
                ("10.9.0.0/16".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
            ]),
        ])
        .facts()
        .unwrap();
        assert_eq!(f.routes.len(), 2);
        assert!(!f.routes[0].link_scope);
        assert!(f.routes[1].link_scope);
    }

    #[test]
    fn lease_times_default_as_the_reference() {
        let (lease, t1, t2) = ack(vec![DhcpOption::AddressLeaseTime(120)]).times();
        assert_eq!(
            (lease.as_secs(), t1.as_secs(), t2.as_secs()),
            (120, 60, 102)
        );
        let (lease, t1, t2) = ack(vec![]).times();
        assert_eq!(
            (lease.as_secs(), t1.as_secs(), t2.as_secs()),
            (3600, 1800, 3060)
        );
        let (_, t1, t2) = ack(vec![DhcpOption::Renewal(5), DhcpOption::Rebinding(8)]).times();
        assert_eq!((t1.as_secs(), t2.as_secs()), (5, 8));
    }
}
