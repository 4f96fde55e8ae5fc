//! One attachment's lease: acquired inside the pod's namespace on the pod's interface, then kept by a
//! thread of its own through the RFC 2131 states — BOUND until T1, RENEWING (unicast to the server) until
//! T2, REBINDING (broadcast) until the lease expires — until DEL stops it with a DHCPRELEASE.
//!
//! As the reference, maintenance ends without a release when the interface disappears (the pod is gone
//! and so is the address), and an expired lease takes the interface down so the pod does not keep using
//! an address the server may give to someone else.

use super::exchange::{self, Ack, Client, ExchangeError, Interface};
use super::Timing;
use crate::options::LeaseOptions;
use crate::protocol::{Attachment, LeaseFacts};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};
use twill_cni::{Error, Result};
use twill_kernel::{Handle, NetNs};

/// Retries start fast (RFC 2131 §4.1 suggests exponential backoff from 4 s, randomised by ±1 s): four
/// at 2 s, then 4 s doubling up to `-resendmax`, as the reference does.
struct Backoff {
    fast_left: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            fast_left: 4,
            base: Duration::from_secs(4),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let jitter = Duration::from_millis(rand::random_range(0..2000));
        let delay = if self.fast_left > 0 {
            self.fast_left -= 1;
            Duration::from_secs(2)
        } else {
            let d = self.base;
            if self.base < self.max {
                self.base *= 2;
            }
            d
        };
        (delay + jitter).saturating_sub(Duration::from_secs(1))
    }
}

enum Control {
    /// CHECK or a repeated ADD: look at the link and the lease now.
    Check,
    Stop,
}

/// Where a lease lives and what it asks for.
pub struct LeaseSpec {
    pub attachment: Attachment,
    /// The pod's namespace path, host prefix applied.
    pub netns: String,
    pub options: LeaseOptions,
}

/// A lease kept by its maintenance thread.
pub struct Lease {
    pub attachment: Attachment,
    current: Arc<Mutex<Ack>>,
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

/// What the maintenance thread owns.
struct Keeper {
    label: String,
    netns: NetNs,
    handle: Handle,
    iface: Interface,
    client_id: Vec<u8>,
    options: LeaseOptions,
    timing: Timing,
    current: Arc<Mutex<Ack>>,
    control: Receiver<Control>,
}

fn lock(m: &Mutex<Ack>) -> std::sync::MutexGuard<'_, Ack> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lease {
    /// Acquires the lease (blocking, retried until `-resendtimeout`) and starts maintaining it.
    pub fn acquire(spec: LeaseSpec, timing: Timing) -> Result<Lease> {
        let label = spec.attachment.label();
        info!(lease = %label, netns = %spec.netns, ifname = %spec.attachment.ifname, "acquiring lease");
        let netns = NetNs::open(&spec.netns).map_err(|e| Error::failed(e.to_string()))?;
        let handle = Handle::in_netns(&netns).map_err(|e| Error::failed(e.to_string()))?;
        let ifname = &spec.attachment.ifname;
        let link = handle
            .link_by_name(ifname)
            .map_err(|e| Error::failed(format!("error looking up {ifname:?}: {e}")))?;
        if !link.up {
            info!(lease = %label, "link {ifname} down; setting it up");
            handle
                .set_link_up(link.index)
                .map_err(|e| Error::failed(e.to_string()))?;
        }
        let mac = link.mac.map(|m| m.octets()).ok_or_else(|| {
            Error::failed(format!("{ifname} in {} has no MAC address", spec.netns))
        })?;
        let (tx, rx) = mpsc::channel();
        let keeper = Keeper {
            label: label.clone(),
            netns,
            handle,
            iface: Interface {
                name: ifname.clone(),
                mac,
            },
            client_id: spec.attachment.client_id(),
            options: spec.options,
            timing,
            // Replaced by the first ACK below.
            current: Arc::new(Mutex::new(Ack {
                msg: Default::default(),
                server: std::net::Ipv4Addr::BROADCAST,
                received: Instant::now(),
            })),
            control: rx,
        };
        let ack = keeper
            .retry_until(
                timing.resend_timeout,
                |c| c.acquire(None),
                |d| {
                    std::thread::sleep(d);
                    false
                },
            )
            .map_err(|e| Error::failed(format!("no lease for {label} on {ifname}: {e}")))?
            .ok_or_else(|| Error::failed("lease acquisition stopped"))?;
        let (lease_time, ..) = ack.times();
        info!(lease = %label, address = %ack.address(), server = %ack.server,
            lease_secs = lease_time.as_secs(), "lease acquired");
        *lock(&keeper.current) = ack;
        let current = keeper.current.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{ifname}"))
            .spawn(move || keeper.maintain())
            .map_err(|e| Error::failed(format!("cannot start lease maintenance: {e}")))?;
        Ok(Lease {
            attachment: spec.attachment,
            current,
            control: tx,
            thread,
        })
    }

    pub fn facts(&self) -> std::result::Result<LeaseFacts, String> {
        lock(&self.current).facts()
    }

    /// Whether the lease is still maintained (not ended by a lost interface or expiry).
    pub fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }

    pub fn check(&self) {
        let _ = self.control.send(Control::Check);
    }

    /// Stops maintenance and sends DHCPRELEASE; returns once done.
    pub fn stop(self) {
        let _ = self.control.send(Control::Stop);
        if self.thread.join().is_err() {
            error!(lease = %self.attachment.label(), "lease maintenance panicked");
        }
    }
}

impl Keeper {
    fn client(&self) -> std::io::Result<Client<'_>> {
        Ok(Client {
            socket: exchange::open_socket(&self.netns, &self.iface.name)?,
            iface: &self.iface,
            client_id: &self.client_id,
            options: &self.options,
            timeout: self.timing.timeout,
        })
    }

    /// Runs `op` until it succeeds or `budget` is spent, sleeping with backoff between tries through
    /// `sleep` (which returns true when told to stop; then the answer is `Ok(None)`).
    fn retry_until(
        &self,
        budget: Duration,
        op: impl Fn(&Client<'_>) -> std::result::Result<Ack, ExchangeError>,
        mut sleep: impl FnMut(Duration) -> bool,
    ) -> std::result::Result<Option<Ack>, String> {
        let deadline = Instant::now() + budget;
        let mut backoff = Backoff::new(self.timing.resend_max);
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = self
                .client()
                .map_err(ExchangeError::Io)
                .and_then(|c| op(&c));
            let err = match outcome {
                Ok(ack) => return Ok(Some(ack)),
                Err(e) => e,
            };
            let delay = backoff.next();
            debug!(lease = %self.label, error = %err, retry_in_ms = delay.as_millis() as u64, "DHCP exchange failed");
            if Instant::now() + delay >= deadline {
                return Err(format!("{err} (no more tries after {tries})"));
            }
            if sleep(delay) {
                return Ok(None);
            }
        }
    }

    /// Waits for `d` or a control message; true when told to stop.
    fn wait(&self, d: Duration) -> bool {
        match self.control.recv_timeout(d) {
            Ok(Control::Check) => {
                debug!(lease = %self.label, "checking lease");
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => true,
        }
    }

    fn link_exists(&self) -> bool {
        match self.handle.link_by_name(&self.iface.name) {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => {
                warn!(lease = %self.label, error = %e, "link check failed");
                true
            }
        }
    }

    fn release(&self) {
        let ack = lock(&self.current).clone();
        info!(lease = %self.label, address = %ack.address(), "releasing lease");
        if let Err(e) = self.client().and_then(|c| c.release(&ack)) {
            warn!(lease = %self.label, error = %e, "failed to send DHCPRELEASE");
        }
    }

    fn maintain(self) {
        loop {
            if !self.link_exists() {
                info!(lease = %self.label, ifname = %self.iface.name,
                    "interface no longer exists; ending lease maintenance");
                return;
            }
            let ack = lock(&self.current).clone();
            let (lease, t1, t2) = ack.times();
            let (t1_at, t2_at, expiry) =
                (ack.received + t1, ack.received + t2, ack.received + lease);
            let now = Instant::now();
            if now < t1_at {
                if self.wait(t1_at - now) {
                    return self.release();
                }
                continue;
            }
            // RENEWING until T2, then REBINDING until expiry: each phase retries within its window.
            let (phase, until) = if now < t2_at {
                ("renew", t2_at)
            } else {
                ("rebind", expiry)
            };
            if now >= expiry {
                error!(lease = %self.label, "lease expired; bringing the interface down");
                if let Ok(link) = self.handle.link_by_name(&self.iface.name) {
                    if let Err(e) = self.handle.set_link_down(link.index) {
                        warn!(lease = %self.label, error = %e, "cannot bring the interface down");
                    }
                }
                return;
            }
            info!(lease = %self.label, phase, "renewing lease");
            let renewed = self.retry_until(
                until - now,
                |c| {
                    if phase == "renew" {
                        c.renew(&ack)
                    } else {
                        c.acquire(Some(ack.address()))
                    }
                },
                |d| self.wait(d),
            );
            match renewed {
                Ok(Some(new)) => {
                    if new.address() != ack.address() {
                        warn!(lease = %self.label, old = %ack.address(), new = %new.address(),
                            "server gave a different address");
                    }
                    let (lease, ..) = new.times();
                    info!(lease = %self.label, address = %new.address(),
                        lease_secs = lease.as_secs(), "lease renewed");
                    *lock(&self.current) = new;
                }
                Ok(None) => return self.release(),
                Err(e) => {
                    warn!(lease = %self.label, phase, error = %e, "lease not renewed");
                    // The window is spent: the next round moves to the next phase.
                    let left = until.saturating_duration_since(Instant::now());
                    if self.wait(left) {
                        return self.release();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_fast_first_then_doubles_to_the_max() {
        let mut b = Backoff::new(Duration::from_secs(16));
        let delays: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        for d in &delays[..4] {
            assert!((1000..3000).contains(d), "{delays:?}");
        }
        for (d, base) in delays[4..].iter().zip([4000u64, 8000, 16000, 16000]) {
            assert!((base - 1000..base + 1000).contains(d), "{delays:?}");
        }
    }
}
