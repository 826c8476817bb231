//! The wall clock, in the unit versions, hints, outbox records, worker
//! statuses and lag figures carry: milliseconds since the Unix epoch.
//! A clock before the epoch reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
