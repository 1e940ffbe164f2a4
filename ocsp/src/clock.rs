//! The wall clock, in the unit every record of this crate uses: whole Unix seconds. One
//! function, in its own module so the stores, the cache, the pre-signer and the CRL updater read
//! the time the same way without depending on each other.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in whole Unix seconds (0 before 1970, `i64::MAX` past the year 292 billion).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
