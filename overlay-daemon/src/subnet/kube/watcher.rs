//! The node watcher: one list + watch of all Nodes (kube-runtime's watcher: it resumes a broken watch and lists
//! again when the API server says the resource version is gone). Every complete listing is a
//! [`LeaseEvent::Snapshot`] (so nodes deleted while we were not watching go), and between listings each Node
//! that changed what peers use (podCIDR, public IP, backend type and data) is an `Added`, `Removed` or
//! `Garbled`. Our own Node goes to the own-node keeper instead.
//!
//! While the API server is unreachable nothing is removed: the kernel keeps what it has, so pods keep talking,
//! and /readyz warns why.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::{mpsc, watch};

use super::annotations::Annotations;
use super::pod_cidr::Families;
use super::{annotations_of, pod_cidrs_of};
use crate::metrics::Metrics;
use crate::subnet::{Garbled, Lease, LeaseEvent, SubnetKey};

/// What a peer Node means for the data plane.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerState {
    Lease(Lease),
    /// It says it runs a flannel-compatible daemon, but its annotations cannot be used.
    Garbled(SubnetKey, String),
}

impl PeerState {
    fn key(&self) -> SubnetKey {
        match self {
            PeerState::Lease(l) => l.key,
            PeerState::Garbled(s, _) => *s,
        }
    }
}

/// The peer state of a Node (`None`: not a peer).
pub fn peer_state(names: &Annotations, families: Families, node: &Node) -> Option<PeerState> {
    let name = node.metadata.name.as_deref()?;
    let pods = pod_cidrs_of(node).ok()?;
    match names.peer_lease(name, &annotations_of(node), pods, families) {
        Ok(l) => l.map(PeerState::Lease),
        Err((key, e)) => Some(PeerState::Garbled(key, e)),
    }
}

/// The peers' state, fed from watch events; turns each into the lease events it causes.
#[derive(Default)]
pub struct Peers {
    known: BTreeMap<String, PeerState>,
    /// The listing under way (between `Init` and `InitDone`).
    listing: Option<BTreeMap<String, PeerState>>,
}

impl Peers {
    /// A complete listing begins.
    pub fn init(&mut self) {
        self.listing = Some(BTreeMap::new());
    }

    pub fn listed(&mut self, name: &str, state: Option<PeerState>) {
        if let (Some(l), Some(s)) = (self.listing.as_mut(), state) {
            l.insert(name.to_string(), s);
        }
    }

    /// The listing is complete: it replaces everything known.
    pub fn init_done(&mut self) -> LeaseEvent {
        self.known = self.listing.take().unwrap_or_default();
        let mut leases = Vec::new();
        let mut garbled = Vec::new();
        for s in self.known.values() {
            match s {
                PeerState::Lease(l) => leases.push(l.clone()),
                PeerState::Garbled(key, error) => garbled.push(Garbled {
                    key: *key,
                    error: error.clone(),
                }),
            }
        }
        LeaseEvent::Snapshot(leases, garbled)
    }

    /// A Node was added or changed (`None`: deleted, or no longer a peer).
    pub fn apply(&mut self, name: &str, state: Option<PeerState>) -> Vec<LeaseEvent> {
        let old = self.known.get(name);
        if old == state.as_ref() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(o) = old {
            if state.as_ref().map(PeerState::key) != Some(o.key()) {
                out.push(LeaseEvent::Removed(o.key()));
            }
        }
        match &state {
            Some(PeerState::Lease(l)) => out.push(LeaseEvent::Added(l.clone())),
            Some(PeerState::Garbled(key, error)) => out.push(LeaseEvent::Garbled(Garbled {
                key: *key,
                error: error.clone(),
            })),
            None => {}
        }
        match state {
            Some(s) => self.known.insert(name.to_string(), s),
            None => self.known.remove(name),
        };
        out
    }
}

pub async fn watch_nodes(
    nodes: Api<Node>,
    own: String,
    names: Annotations,
    families: Families,
    tx: mpsc::Sender<(Instant, LeaseEvent)>,
    own_tx: watch::Sender<Option<Node>>,
    metrics: Arc<Metrics>,
) {
    // any_semantic: listings may come from the API server's watch cache, as client-go informers' do.
    let stream =
        watcher::watcher(nodes, watcher::Config::default().any_semantic()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut peers = Peers::default();
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                let e = format!("Kubernetes API: watching nodes: {e}");
                if !failing {
                    tracing::warn!("{e}; retrying with backoff (the data plane is kept as it is)");
                    failing = true;
                }
                metrics.etcd_error(&e);
                continue;
            }
        };
        if failing {
            tracing::info!("watching nodes again");
            failing = false;
        }
        metrics.etcd_ok();
        let now = Instant::now();
        let out = match ev {
            Event::Init => {
                peers.init();
                continue;
            }
            Event::InitApply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if name == own {
                    own_tx.send_replace(Some(n));
                } else {
                    peers.listed(&name, peer_state(&names, families, &n));
                }
                continue;
            }
            Event::InitDone => vec![peers.init_done()],
            Event::Apply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if name == own {
                    own_tx.send_replace(Some(n));
                    continue;
                }
                peers.apply(&name, peer_state(&names, families, &n))
            }
            Event::Delete(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if name == own {
                    tracing::warn!(
                        "node {own} was deleted: keeping its subnet until it is registered again"
                    );
                    continue;
                }
                peers.apply(&name, None)
            }
        };
        for ev in out {
            metrics.lease_events.fetch_add(1, Relaxed);
            if tx.send((now, ev)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::LeaseAttrs;

    fn lease(subnet: &str, ip: &str, mac: &str) -> PeerState {
        PeerState::Lease(Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs: LeaseAttrs::vxlan(
                Some((ip.parse().unwrap(), mac.parse().unwrap())),
                None,
                1,
                "n",
            ),
            lease_id: 0,
        })
    }

    #[test]
    fn a_listing_is_a_snapshot_and_replaces_what_was_known() {
        let mut p = Peers::default();
        p.init();
        p.listed(
            "a",
            Some(lease("10.244.1.0/24", "192.168.1.1", "02:00:00:00:00:01")),
        );
        p.listed("b", None);
        p.listed(
            "c",
            Some(PeerState::Garbled(
                SubnetKey::v4("10.244.3.0/24".parse().unwrap()),
                "bad".into(),
            )),
        );
        let LeaseEvent::Snapshot(l, g) = p.init_done() else {
            panic!("not a snapshot");
        };
        assert_eq!((l.len(), g.len()), (1, 1));
        // A re-listing without "a" forgets it: the snapshot says so to the reconciler.
        p.init();
        let LeaseEvent::Snapshot(l, _) = p.init_done() else {
            panic!("not a snapshot");
        };
        assert!(l.is_empty());
        assert!(p.apply("a", None).is_empty());
    }

    #[test]
    fn only_changes_that_matter_are_events() {
        let mut p = Peers::default();
        let a = lease("10.244.1.0/24", "192.168.1.1", "02:00:00:00:00:01");
        assert!(matches!(
            p.apply("a", Some(a.clone()))[..],
            [LeaseEvent::Added(_)]
        ));
        // A status heartbeat of the same node changes nothing for peers.
        assert!(p.apply("a", Some(a)).is_empty());
        let moved = lease("10.244.1.0/24", "192.168.1.1", "02:00:00:00:00:02");
        assert!(matches!(
            p.apply("a", Some(moved))[..],
            [LeaseEvent::Added(_)]
        ));
        // Another subnet (node deleted and registered again): the old one goes first.
        let other = lease("10.244.7.0/24", "192.168.1.1", "02:00:00:00:00:02");
        let ev = p.apply("a", Some(other));
        assert!(
            matches!(&ev[..], [LeaseEvent::Removed(s), LeaseEvent::Added(_)] if s.to_string() == "10.244.1.0/24"),
            "{ev:?}"
        );
        let ev = p.apply("a", None);
        assert!(
            matches!(&ev[..], [LeaseEvent::Removed(s)] if s.to_string() == "10.244.7.0/24"),
            "{ev:?}"
        );
        assert!(p.apply("never-seen", None).is_empty());
    }
}
