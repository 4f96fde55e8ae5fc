//! The token bucket for a rate and burst, computed exactly as the reference does (so CHECK of either
//! plugin accepts the other's qdiscs): bytes per second, a bucket of `burst` bytes expressed in
//! scheduler ticks, and a queue limit of 25 ms at the rate plus the burst.

use crate::config::Shape;
use twill_kernel::tc::Tbf;

/// Queueing latency the limit allows for.
const LATENCY_MS: f64 = 25.0;
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;

pub fn tbf(shape: Shape, ticks_per_usec: f64) -> Tbf {
    let rate = shape.rate_bits / 8;
    // Validation keeps burst / 8 below u32::MAX.
    let burst = u32::try_from(shape.burst_bits / 8).unwrap_or(u32::MAX);
    let usecs = (f64::from(burst) * TIME_UNITS_PER_SEC / rate as f64) as u32;
    let buffer = (f64::from(usecs) * ticks_per_usec) as u32;
    let latency = TIME_UNITS_PER_SEC * (LATENCY_MS / 1000.0);
    let limit = ((rate as f64 * latency / TIME_UNITS_PER_SEC) as u32).wrapping_add(burst);
    Tbf {
        rate,
        limit,
        buffer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_arithmetic() {
        // 1 Mbit/s with a 100 kbit burst: 125000 B/s, 12500 B bucket = 100 ms = 1562500 ticks,
        // limit 3125 + 12500 bytes.
        let t = tbf(
            Shape {
                rate_bits: 1_000_000,
                burst_bits: 100_000,
            },
            15.625,
        );
        assert_eq!(
            t,
            Tbf {
                rate: 125_000,
                limit: 15_625,
                buffer: 1_562_500
            }
        );
    }
}
