//! Detects an etcd store that went backwards: wiped and restarted, or restored from an older snapshot. A
//! watch resumed from the last revision seen would then wait for a revision the new store reaches only much
//! later (or reaches with different writes), and our lease would be missing from it: the node goes blind.
//! Every response header is observed; the store went back when
//!
//! - the cluster id changed (another cluster answers at the same address),
//! - the revision is lower than one already seen (revisions only grow), or
//! - the raft term is lower than one already seen (terms only grow; a restored or new cluster starts over);
//!
//! and, seen by the lease keeper, when our own key is gone at renewal. A member lagging behind the leader can
//! answer with a slightly older revision; treating that as a reset costs one re-list and one lease re-put,
//! both idempotent, which is why the check is not made looser.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The last store identity seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub cluster_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl Epoch {
    /// Why `now` cannot come from the same store history as `self`, if it cannot.
    pub fn went_back(&self, now: &Epoch) -> Option<String> {
        if *self == Epoch::default() {
            return None;
        }
        if now.cluster_id != self.cluster_id {
            return Some(format!(
                "etcd cluster id changed from {:x} to {:x}",
                self.cluster_id, now.cluster_id
            ));
        }
        if now.revision < self.revision {
            return Some(format!(
                "etcd revision went back from {} to {}",
                self.revision, now.revision
            ));
        }
        if now.raft_term < self.raft_term {
            return Some(format!(
                "etcd raft term went back from {} to {}",
                self.raft_term, now.raft_term
            ));
        }
        None
    }
}

#[derive(Debug, Default)]
struct State {
    seen: Epoch,
    /// A reset noticed but not yet handled by the lease watcher.
    pending: Option<String>,
}

/// Shared by every clone of the registry: whoever sees a header observes it, the lease watcher handles a
/// reset (re-list, re-register) and is woken for one noticed elsewhere.
#[derive(Clone, Default)]
pub struct StoreEpoch {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl StoreEpoch {
    pub fn observe(&self, header: Option<&etcd_client::ResponseHeader>) {
        let Some(h) = header else { return };
        let now = Epoch {
            cluster_id: h.cluster_id(),
            revision: h.revision(),
            raft_term: h.raft_term(),
        };
        // Some responses carry no position in the history (a cancelled or compacted watch answers with
        // revision 0): nothing to compare.
        if now.revision <= 0 || now.raft_term == 0 {
            return;
        }
        let mut reset = None;
        if let Ok(mut s) = self.state.lock() {
            if let Some(why) = s.seen.went_back(&now) {
                s.seen = now;
                s.pending.get_or_insert_with(|| why.clone());
                reset = Some(why);
            } else {
                s.seen.cluster_id = now.cluster_id;
                s.seen.revision = s.seen.revision.max(now.revision);
                s.seen.raft_term = s.seen.raft_term.max(now.raft_term);
            }
        }
        if reset.is_some() {
            self.wake.notify_one();
        }
    }

    /// Reports a reset seen by other means (our key gone at renewal).
    pub fn report(&self, why: String) {
        if let Ok(mut s) = self.state.lock() {
            s.pending.get_or_insert(why);
        }
        self.wake.notify_one();
    }

    pub fn take_reset(&self) -> Option<String> {
        self.state.lock().ok().and_then(|mut s| s.pending.take())
    }

    /// Resolves when a reset was noticed (possibly before the call).
    pub async fn notified(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(cluster_id: u64, revision: i64, raft_term: u64) -> Epoch {
        Epoch {
            cluster_id,
            revision,
            raft_term,
        }
    }

    #[test]
    fn a_store_that_only_moves_forward_is_not_a_reset() {
        assert_eq!(e(1, 300, 4).went_back(&e(1, 300, 4)), None);
        assert_eq!(e(1, 300, 4).went_back(&e(1, 301, 5)), None);
        assert_eq!(Epoch::default().went_back(&e(1, 2, 2)), None);
    }

    #[test]
    fn wiped_restored_or_replaced_stores_are_resets() {
        assert!(e(1, 309, 3)
            .went_back(&e(1, 4, 2))
            .unwrap()
            .contains("revision went back from 309 to 4"));
        // Restored from a snapshot taken before many writes, then written to past the old revision.
        assert!(e(1, 309, 5)
            .went_back(&e(1, 400, 2))
            .unwrap()
            .contains("raft term"));
        assert!(e(1, 309, 3)
            .went_back(&e(2, 400, 3))
            .unwrap()
            .contains("cluster id"));
    }
}
