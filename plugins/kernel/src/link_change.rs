//! Device attributes only meta plugins change one at a time: all-multicast mode and the transmit queue
//! length (several at once: [`Handle::change_link`]).

use netlink_packet_route::link::{LinkAttribute, LinkFlags};

use crate::error::Result;
use crate::handle::Handle;
use crate::link::new_link_message;

impl Handle {
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
