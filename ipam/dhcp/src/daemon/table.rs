//! The daemon's leases, one per attachment. Calls for one attachment are serialised (a second ADD
//! waits for the first's DHCP exchange and gets the same lease); calls for different attachments run in
//! parallel.

use super::lease::{Lease, LeaseSpec};
use super::Timing;
use crate::protocol::{Attachment, LeaseFacts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::info;
use twill_cni::{Error, Result};

type Slot = Arc<Mutex<Option<Lease>>>;

#[derive(Default)]
pub struct LeaseTable {
    slots: Mutex<HashMap<Attachment, Slot>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseTable {
    fn slot(&self, a: &Attachment) -> Slot {
        lock(&self.slots).entry(a.clone()).or_default().clone()
    }

    /// Drops the slot when it is empty and nobody else holds it.
    fn tidy(&self, a: &Attachment) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(a) {
            if Arc::strong_count(slot) == 1 && lock(slot).is_none() {
                slots.remove(a);
            }
        }
    }

    /// The attachment's lease, acquired first when there is none (or its maintenance ended).
    pub fn allocate(&self, spec: LeaseSpec, timing: Timing) -> Result<LeaseFacts> {
        let attachment = spec.attachment.clone();
        let slot = self.slot(&attachment);
        let outcome = {
            let mut held = lock(&slot);
            if held.as_ref().is_some_and(|l| !l.is_alive()) {
                info!(lease = %attachment.label(), "lease maintenance had ended; acquiring again");
                *held = None;
            }
            match held.as_ref() {
                Some(lease) => {
                    lease.check();
                    lease.facts().map_err(Error::failed)
                }
                None => Lease::acquire(spec, timing).and_then(|lease| match lease.facts() {
                    Ok(facts) => {
                        *held = Some(lease);
                        Ok(facts)
                    }
                    Err(e) => {
                        lease.stop();
                        Err(Error::failed(e))
                    }
                }),
            }
        };
        drop(slot);
        self.tidy(&attachment);
        outcome
    }

    /// Stops and releases the attachment's lease, if any.
    pub fn release(&self, attachment: &Attachment) {
        let slot = lock(&self.slots).get(attachment).cloned();
        if let Some(slot) = slot {
            let lease = lock(&slot).take();
            if let Some(lease) = lease {
                lease.stop();
            }
        }
        self.tidy(attachment);
    }

    /// Releases the leases of `network` whose (container id, ifname) is not in `keep`.
    pub fn gc(&self, network: &str, keep: &[(String, String)]) {
        let stale: Vec<Attachment> = lock(&self.slots)
            .keys()
            .filter(|a| {
                a.network == network
                    && !keep
                        .iter()
                        .any(|(c, i)| *c == a.container_id && *i == a.ifname)
            })
            .cloned()
            .collect();
        for a in stale {
            info!(lease = %a.label(), "garbage-collecting lease");
            self.release(&a);
        }
    }
}
