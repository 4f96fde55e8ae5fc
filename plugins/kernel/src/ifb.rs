//! Intermediate functional block devices: a packet redirected to an ifb's egress passes its root
//! qdisc and is then handed back to the stack, which is how ingress traffic gets shaped.
//!
//! Each ifb carries an alias (`IFLA_IFALIAS`) naming its owner, so that the devices of vanished
//! attachments can be found again without any file on disk.

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkExtentMask, LinkInfo};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Result;
use crate::handle::Handle;
use crate::link::{named_link_message, new_link_message, Link};

/// An ifb device as listed: the link and its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ifb {
    pub link: Link,
    pub alias: Option<String>,
}

impl Handle {
    /// Creates an ifb device, up, with `mtu` and a zero transmit queue length (the ifb only
    /// forwards; its root qdisc does the queueing).
    pub fn create_ifb(&self, name: &str, mtu: u32) -> Result<Link> {
        let mut msg = named_link_message(name, Some(mtu), None, true);
        msg.attributes.push(LinkAttribute::TxQueueLen(0));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.create_link(msg, name, "create ifb", || name.to_string())
    }

    /// Sets a device's alias (`IFLA_IFALIAS`; RTM_NEWLINK ignores it when creating a device).
    pub fn set_link_alias(&self, index: u32, alias: &str) -> Result<()> {
        let mut set = new_link_message(index);
        set.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(set), 0, "set alias", || {
            format!("ifindex {index}")
        })
        .map(|_| ())
    }

    /// Every ifb device of the namespace, with its alias.
    pub fn ifbs(&self) -> Result<Vec<Ifb>> {
        let mut msg = new_link_message(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        let msgs = self.dump(
            RouteNetlinkMessage::GetLink(msg),
            "list ifb devices",
            String::new,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .filter_map(|l| {
                let link = Link::from_message(&l);
                if link.kind.as_deref() != Some("ifb") {
                    return None;
                }
                let alias = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfAlias(s) => Some(s.clone()),
                    _ => None,
                });
                Some(Ifb { link, alias })
            })
            .collect())
    }
}
