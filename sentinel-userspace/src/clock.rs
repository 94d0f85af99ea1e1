//! Time bases: `CLOCK_MONOTONIC` is what `bpf_ktime_get_ns()` reads, so kernel expiries and
//! last-seen stamps are compared against it.

use std::time::{SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall clock in nanoseconds since the Unix epoch (0 for a clock set before it): the time
/// base of transactions and alerts.
pub fn unix_ns() -> u64 {
    unix_ns_at(SystemTime::now())
}

/// The wall clock in seconds since the Unix epoch: the time base of verdicts.
pub fn unix_s() -> f64 {
    unix_s_at(SystemTime::now())
}

/// `at` in nanoseconds since the Unix epoch (0 for a time before it).
pub fn unix_ns_at(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `at` in seconds since the Unix epoch (0 for a time before it).
pub fn unix_s_at(at: SystemTime) -> f64 {
    unix_ns_at(at) as f64 / 1e9
}
