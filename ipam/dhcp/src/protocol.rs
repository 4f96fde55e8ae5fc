//! What the plugin half and the daemon half say to each other over the daemon's Unix socket: one JSON
//! request, one JSON reply, one connection per call. It is twill's own protocol (the reference speaks Go
//! net/rpc), so a twill plugin needs a twill daemon and the reference plugin the reference daemon.

use crate::options::LeaseOptions;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;

/// Replies larger than this are not ours: a peer that is not a twill daemon is refused, not buffered.
const MAX_MESSAGE: u64 = 1 << 20;

/// The attachment a lease belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub network: String,
    pub ifname: String,
}

impl Attachment {
    /// DHCP option 61 as the reference sends it: type 0 followed by `<container id>/<network>/<ifname>`,
    /// cut to 254 bytes. Keeping its value keeps a pod's address across a switch between the reference
    /// daemon and ours, since servers key leases by client identifier.
    pub fn client_id(&self) -> Vec<u8> {
        let text = format!("{}/{}/{}", self.container_id, self.network, self.ifname);
        let mut id = vec![0u8];
        id.extend(text.as_bytes().iter().take(254));
        id
    }

    /// The identifier's text, for logs.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.container_id, self.network, self.ifname)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Return the attachment's lease, acquiring it inside `netns` on `ifname` first when there is none.
    Allocate {
        attachment: Attachment,
        /// Absolute path of the pod's network namespace, as the plugin was given it.
        netns: String,
        options: LeaseOptions,
    },
    /// Stop maintaining the attachment's lease and send DHCPRELEASE; nothing to do when there is none.
    Release { attachment: Attachment },
    /// Release every lease of `network` whose (container id, ifname) is not in `keep`.
    Gc {
        network: String,
        keep: Vec<(String, String)>,
    },
    /// The daemon answers: it can serve ADD.
    Status,
}

/// A route of the result, from option 121, option 33 or the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRoute {
    pub dst: Ipv4Net,
    pub gw: Ipv4Addr,
    /// A route without a router (option 121's 0.0.0.0) is link scope.
    pub link_scope: bool,
}

/// What a lease gives the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFacts {
    /// The offered address with the prefix of option 1.
    pub address: Ipv4Net,
    /// The first router of option 3.
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<LeaseRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Lease(LeaseFacts),
    Done,
    /// A failure, with the CNI error code the plugin reports.
    Error {
        code: u32,
        msg: String,
    },
}

/// Writes one message as a JSON line.
pub fn write_message<T: Serialize>(mut w: impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one JSON line.
pub fn read_message<T: for<'de> Deserialize<'de>>(r: impl Read) -> std::io::Result<T> {
    let mut line = Vec::new();
    BufReader::new(r.take(MAX_MESSAGE)).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without a reply",
        ));
    }
    serde_json::from_slice(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_the_references() {
        let a = Attachment {
            container_id: "c1".into(),
            network: "net".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(a.client_id(), b"\0c1/net/eth0".to_vec());
        let long = Attachment {
            container_id: "c".repeat(300),
            ..a
        };
        assert_eq!(long.client_id().len(), 255);
    }

    #[test]
    fn messages_round_trip() {
        let call = Call::Release {
            attachment: Attachment {
                container_id: "c".into(),
                network: "n".into(),
                ifname: "eth0".into(),
            },
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &call).unwrap();
        let back: Call = read_message(&buf[..]).unwrap();
        assert!(matches!(back, Call::Release { .. }));
        assert!(read_message::<Call>(&b""[..]).is_err());
    }
}
