//! Wall-clock time as stored (integer milliseconds since the Unix epoch) and
//! as shown (RFC 3339 UTC).

use jiff::Timestamp;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Seconds since the Unix epoch, now (TURN credentials and nonces count in
/// whole seconds).
pub fn now_s() -> u64 {
    Timestamp::now().as_second().max(0) as u64
}

/// RFC 3339 UTC with millisecond precision, e.g. `2026-11-26T08:00:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(timestamp) => format!("{timestamp:.3}"),
        // Only reachable with a corrupted row; show something honest rather than panic.
        Err(_) => format!("invalid-timestamp:{ms}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_144_000_123), "2025-11-26T08:00:00.123Z");
    }
}
