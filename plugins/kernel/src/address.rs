//! IP addresses on devices.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::handle::Handle;

/// Which address family to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn to_af(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Scope of an address (`ip addr` "scope").
pub use netlink_packet_route::address::AddressScope as Scope;

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// Address with its prefix length, e.g. 10.1.0.2/24.
    pub net: IpNet,
    pub scope: Scope,
    /// IPv6 duplicate address detection still running: the address cannot be used as a source yet.
    pub tentative: bool,
    /// IPv6 duplicate address detection failed: the address is unusable.
    pub dadfailed: bool,
    /// Raw IFA_F_* flags.
    pub flags: u32,
}

/// Options for [`Handle::add_address_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressOptions {
    /// Skip IPv6 duplicate address detection (IFA_F_NODAD): the address is usable at once.
    pub nodad: bool,
    /// Do not install the prefix route (IFA_F_NOPREFIXROUTE).
    pub no_prefix_route: bool,
}

fn address_message(index: u32, net: &IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = Family::of(&net.addr()).to_af();
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    // For IPv4 IFA_ADDRESS is the peer address of point-to-point links and must equal IFA_LOCAL
    // otherwise (iproute2 sends both).
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    msg
}

impl Handle {
    /// Adds `net` (address with prefix) to the device. An address that is already there is
    /// [`Error::is_exists`](crate::Error::is_exists).
    pub fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.add_address_with(index, net, AddressOptions::default())
    }

    /// [`add_address`](Self::add_address) with options.
    pub fn add_address_with(&self, index: u32, net: IpNet, opts: AddressOptions) -> Result<()> {
        let mut msg = address_message(index, &net);
        if let IpNet::V4(v4) = net {
            // As iproute2's `brd +`: hosts on the subnet expect the broadcast address to be set.
            if v4.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        let mut flags = AddressFlags::empty();
        if opts.nodad {
            flags |= AddressFlags::Nodad;
        }
        if opts.no_prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            msg.attributes.push(AddressAttribute::Flags(flags));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            "add address",
            || format!("{net} to index {index}"),
        )
        .map(|_| ())
    }

    /// Removes `net` from the device; an address that is not there is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn delete_address(&self, index: u32, net: IpNet) -> Result<()> {
        let msg = address_message(index, &net);
        self.request(
            RouteNetlinkMessage::DelAddress(msg),
            0,
            "delete address",
            || format!("{net} from index {index}"),
        )
        .map(|_| ())
    }

    /// Addresses, optionally only of one device and/or family.
    pub fn addresses(&self, index: Option<u32>, family: Option<Family>) -> Result<Vec<Address>> {
        let mut msg = AddressMessage::default();
        if let Some(f) = family {
            msg.header.family = f.to_af();
        }
        // With strict checking the kernel filters by ifa_index itself.
        msg.header.index = index.unwrap_or(0);
        let msgs = self.dump(
            RouteNetlinkMessage::GetAddress(msg),
            "list addresses",
            || match index {
                Some(i) => format!("of index {i}"),
                None => String::new(),
            },
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let mut local = None;
            let mut address = None;
            let mut flags = a.header.flags.bits() as u32;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            if family.is_some_and(|f| f != Family::of(&ip)) {
                continue;
            }
            let Ok(net) = IpNet::new(ip, a.header.prefix_len) else {
                continue;
            };
            out.push(Address {
                index: a.header.index,
                net,
                scope: a.header.scope,
                tentative: flags & AddressFlags::Tentative.bits() != 0,
                dadfailed: flags & AddressFlags::Dadfailed.bits() != 0,
                flags,
            });
        }
        Ok(out)
    }

    /// Waits until no IPv6 address on the device is tentative (duplicate address detection done),
    /// as the reference plugins' `SettleAddresses`: an address still in DAD cannot be a source, so
    /// a pod could start before it can talk. Fails when DAD failed (a duplicate exists) or on
    /// timeout.
    pub fn settle_addresses(&self, index: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let addrs = self.addresses(Some(index), Some(Family::V6))?;
            if let Some(bad) = addrs.iter().find(|a| a.dadfailed) {
                return Err(Error::new(
                    "settle addresses",
                    format!("on index {index}"),
                    self.netns(),
                    io::Error::from_raw_os_error(libc::EADDRINUSE),
                )
                .with_detail(Some(format!(
                    "duplicate address detection failed for {}",
                    bad.net
                ))));
            }
            if !addrs.iter().any(|a| a.tentative) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    "settle addresses",
                    format!("on index {index}"),
                    self.netns(),
                    io::Error::from(io::ErrorKind::TimedOut),
                )
                .with_detail(Some("addresses still tentative".to_string())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
