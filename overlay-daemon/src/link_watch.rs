//! The link watcher: tells the reconciler when our device is deleted or changed, so a full pass recreates
//! it and replays the peers.

use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;

use crate::daemon::Fatal;

/// Notifies when our device is deleted or changed (docs/architecture.md, "VXLAN programming": flannel recreates it
/// but does not replay peers; we trigger a full reconcile, which does).
pub fn watch_link(name: String) -> Result<mpsc::Receiver<()>, Fatal> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(|e| format!("opening netlink link monitor: {e}"))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let link = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                | NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => l,
                _ => continue,
            };
            let ours = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == name));
            if ours && tx.try_send(()).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
