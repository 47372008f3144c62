//! Wall-clock time in unix microseconds: the one clock shared by the parent, every worker and
//! the push payloads (`t_us`), so latencies can be computed across processes on one machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Now, in seconds since the unix epoch.
pub fn unix_secs() -> u64 {
    unix_us() / 1_000_000
}
