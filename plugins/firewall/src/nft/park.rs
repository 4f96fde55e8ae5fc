//! Sockets whose close would wait for nf_tables' deferred destroy work (an RCU grace period,
//! 5–20 ms) are parked here instead of closed: the plugin has no reason to wait for the kernel to
//! free deleted rules. Parked sockets are closed once old enough, or by the kernel at exit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlink_sys::Socket;

/// Parked sockets older than this close without waiting (the destroy work is long done).
const PARK_AGE: Duration = Duration::from_millis(200);
/// At most this many sockets stay parked; older ones are closed (possibly waiting).
const PARK_MAX: usize = 32;

static PARKED: Mutex<Vec<(Instant, Socket)>> = Mutex::new(Vec::new());

/// Keeps `socket` open for a while instead of closing it now.
pub(crate) fn park(socket: Socket) {
    let now = Instant::now();
    let mut parked = match PARKED.lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    let keep_from = parked
        .iter()
        .position(|(t, _)| now.duration_since(*t) < PARK_AGE)
        .unwrap_or(parked.len())
        .max((parked.len() + 1).saturating_sub(PARK_MAX));
    let old: Vec<(Instant, Socket)> = parked.drain(..keep_from).collect();
    parked.push((now, socket));
    drop(parked);
    // Closed outside the lock: old enough that closing does not wait (or the cap was hit).
    drop(old);
}

/// Closes every parked socket now, waiting for pending nf_tables destroy work if needed. For
/// long-running processes and benchmarks; plugins can simply exit.
pub fn close_parked_sockets() {
    let parked: Vec<(Instant, Socket)> = match PARKED.lock() {
        Ok(mut p) => p.drain(..).collect(),
        Err(poisoned) => poisoned.into_inner().drain(..).collect(),
    };
    drop(parked);
}
