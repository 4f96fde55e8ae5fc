//! Moving an existing device between namespaces (what host-device does with a node's NIC), and the
//! device details that move needs and [`Link`] does not carry: the alias (`IFLA_IFALIAS`, where the
//! node-side name is kept while the device is in a pod) and the raw hardware address of any length.

use std::os::fd::AsRawFd;

use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Result;
use crate::handle::Handle;
use crate::link::{new_link_message, Link};
use crate::netns::NetNs;

/// `IFLA_IFALIAS` from linux/if_link.h, sent empty to clear the alias.
const IFLA_IFALIAS: u16 = 20;

/// A device with its alias and raw hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    pub link: Link,
    /// `None` when no alias is set.
    pub alias: Option<String>,
    /// `IFLA_ADDRESS` as the kernel reports it (6 bytes for Ethernet, 20 for InfiniBand, empty for
    /// devices without one).
    pub hw_addr: Vec<u8>,
}

impl LinkDetails {
    fn from_message(msg: &LinkMessage) -> LinkDetails {
        let mut alias = None;
        let mut hw_addr = Vec::new();
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
                LinkAttribute::Address(a) => hw_addr = a.clone(),
                _ => {}
            }
        }
        LinkDetails {
            link: Link::from_message(msg),
            alias,
            hw_addr,
        }
    }
}

/// What one `RTM_SETLINK` changes on a device besides its namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkRename<'a> {
    /// The new name.
    pub name: Option<&'a str>,
    /// The new alias; `Some("")` clears it.
    pub alias: Option<&'a str>,
    /// Set it administratively up.
    pub up: bool,
}

fn rename_attributes(msg: &mut LinkMessage, change: &LinkRename<'_>) {
    if let Some(name) = change.name {
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    match change.alias {
        Some("") => msg
            .attributes
            .push(LinkAttribute::Other(DefaultNla::new(IFLA_IFALIAS, vec![]))),
        Some(a) => msg.attributes.push(LinkAttribute::IfAlias(a.to_string())),
        None => {}
    }
    if change.up {
        msg.header.flags |= LinkFlags::Up;
        msg.header.change_mask |= LinkFlags::Up;
    }
}

impl Handle {
    fn details(&self, msg: LinkMessage, object: String) -> Result<Option<LinkDetails>> {
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link", || object)?;
        Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(LinkDetails::from_message(&l)),
            _ => None,
        }))
    }

    /// The device named `name` with its alias and hardware address; not found is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn link_details_by_name(&self, name: &str) -> Result<LinkDetails> {
        let mut msg = new_link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.details(msg, name.to_string())?.ok_or_else(|| {
            crate::Error::new(
                "get link",
                name,
                self.netns(),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "kernel sent no link"),
            )
        })
    }

    /// Every device of the namespace with its alias and hardware address.
    pub fn link_details(&self) -> Result<Vec<LinkDetails>> {
        let mut msg = new_link_message(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.dump(RouteNetlinkMessage::GetLink(msg), "list links", String::new)?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(LinkDetails::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Renames the device, sets or clears its alias and optionally sets it up, in one request.
    pub fn rename_link(&self, index: u32, change: &LinkRename<'_>) -> Result<()> {
        let mut msg = new_link_message(index);
        rename_attributes(&mut msg, change);
        self.set_link(msg, "rename link", || {
            format!("index {index} to {:?}", change.name.unwrap_or_default())
        })
    }

    /// Moves the device into `target` and applies `change` there, in one request. The kernel moves
    /// first (keeping the device's name unless it is taken in `target`, where `change.name` is used
    /// instead), then renames, sets the alias and the flags: a failure after the move (the new name
    /// taken in `target`) leaves the device in `target` under its old name, which the caller undoes.
    pub fn move_link(&self, index: u32, target: &NetNs, change: &LinkRename<'_>) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes
            .push(LinkAttribute::NetNsFd(target.as_raw_fd()));
        rename_attributes(&mut msg, change);
        self.set_link(msg, "move link", || {
            format!("index {index} to {}", target.path().display())
        })
    }
}
