//! Unix time, the one way certsync counts it.
//!
//! Certificates, reports, staging markers and metrics all carry seconds since
//! 1970-01-01T00:00:00Z as an `i64`. A time before the epoch is negative (a
//! certificate's `notBefore` can be), never clamped to 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch of `t`; negative before 1970.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    unix_seconds(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_both_sides_of_the_epoch() {
        assert_eq!(unix_seconds(UNIX_EPOCH), 0);
        assert_eq!(
            unix_seconds(UNIX_EPOCH + Duration::from_secs(86_400)),
            86_400
        );
        assert_eq!(
            unix_seconds(UNIX_EPOCH - Duration::from_secs(86_400)),
            -86_400
        );
        assert!(now_unix() > 1_700_000_000);
    }
}
