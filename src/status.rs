//! Read-only views of the running daemon, shared by `stayup status`, the
//! control socket and the admin endpoint.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-24T19:02:44Z`).
pub fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Formats a `SystemTime` as RFC 3339 UTC.
pub fn format_system_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_unix(secs)
}

/// Whole days from `now` until `not_after` (negative once expired).
pub fn days_left(not_after: i64, now: std::time::SystemTime) -> i64 {
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (not_after - now).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_795_000_000), "2026-11-18T11:06:40Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 10);
        assert_eq!(days_left(86_400 * 13 + 5, t), 3);
        assert_eq!(days_left(86_400 * 9, t), -1);
    }
}
