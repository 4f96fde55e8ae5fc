//! Step timings on stderr when `TWILL_BRIDGE_TRACE` is set: how the benchmark's numbers were broken down.
//! Off by default and free when off (one environment lookup per request).

use std::time::Instant;

pub struct Trace {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Trace {
    pub fn new() -> Trace {
        let now = Instant::now();
        Trace {
            on: std::env::var_os("TWILL_BRIDGE_TRACE").is_some(),
            start: now,
            last: now,
        }
    }

    pub fn mark(&mut self, step: &str) {
        if self.on {
            let now = Instant::now();
            eprintln!(
                "bridge trace: {step:<28} +{:>7.3} ms  (at {:>7.3} ms)",
                (now - self.last).as_secs_f64() * 1e3,
                (now - self.start).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}
