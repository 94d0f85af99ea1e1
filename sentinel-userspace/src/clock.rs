//! Time bases: `CLOCK_MONOTONIC` is what `bpf_ktime_get_ns()` reads, so kernel expiries and
//! last-seen stamps are compared against it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Parses a duration as the command line and the policy take it (humantime's syntax: `90s`,
/// `10m`, `12h`, `7d`, `1h30m`, long forms such as `7days`), with a message of our own for what
/// it refuses.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("duration {s:?} is too long"),
        _ => format!(
            "invalid duration {s:?}: use a number with s, m, h, d or w (or ms), such as 90s, \
             10m, 12h or 7d; several add up (1h30m)"
        ),
    })
}
