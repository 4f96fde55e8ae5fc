//! Changing several attributes of a device at once, and the attributes only meta plugins change (all-multicast,
//! transmit queue length).

use netlink_packet_route::link::{LinkAttribute, LinkFlags};

use crate::error::Result;
use crate::handle::Handle;
use crate::link::new_link_message;
use crate::mac::MacAddr;

/// Attributes of a device to change in one request ([`Handle::change_link`]); `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChanges {
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub promisc: Option<bool>,
    pub allmulti: Option<bool>,
    pub txqlen: Option<u32>,
}

impl LinkChanges {
    pub fn is_empty(&self) -> bool {
        *self == LinkChanges::default()
    }
}

impl Handle {
    /// Applies several attribute changes in one RTM_SETLINK (one RTNL lock round instead of one per
    /// attribute). The kernel applies them in its own order and stops at the first it refuses, so on error
    /// some may have been applied: a caller that must undo restores every attribute it asked to change.
    pub fn change_link(&self, index: u32, changes: &LinkChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut msg = new_link_message(index);
        for (flag, on) in [
            (LinkFlags::Promisc, changes.promisc),
            (LinkFlags::Allmulti, changes.allmulti),
        ] {
            if let Some(on) = on {
                msg.header.change_mask |= flag;
                if on {
                    msg.header.flags |= flag;
                }
            }
        }
        if let Some(mac) = changes.mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(mtu) = changes.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(q) = changes.txqlen {
            msg.attributes.push(LinkAttribute::TxQueueLen(q));
        }
        self.set_link(msg, "change link", || format!("index {index}: {changes:?}"))
    }

    /// Turns all-multicast mode on or off (the tuning plugin's `allmulti`).
    pub fn set_link_allmulti(&self, index: u32, on: bool) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.header.change_mask |= LinkFlags::Allmulti;
        if on {
            msg.header.flags |= LinkFlags::Allmulti;
        }
        self.set_link(msg, "set allmulti of link", || {
            format!("index {index} to {on}")
        })
    }

    /// Sets the transmit queue length (the tuning plugin's `txQLen`).
    pub fn set_link_txqlen(&self, index: u32, qlen: u32) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes.push(LinkAttribute::TxQueueLen(qlen));
        self.set_link(msg, "set txqlen of link", || {
            format!("index {index} to {qlen}")
        })
    }
}
