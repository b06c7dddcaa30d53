//! The one human form of a duration, in every message, report and table phoenix prints
//! (JSON documents carry seconds instead: docs/json.md).

use std::time::Duration;

/// Millisecond precision under a minute ("350ms", "1s 234ms"), whole seconds above ("2m 5s",
/// "1h 2m"); a configured value prints as written ("5m", "30s").
pub fn format_duration(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    if rounded.is_zero() {
        return "0ms".to_string();
    }
    humantime::format_duration(rounded).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format() {
        let f = |ms: u64| format_duration(Duration::from_millis(ms));
        assert_eq!(f(0), "0ms");
        assert_eq!(f(5), "5ms");
        assert_eq!(f(1_049), "1s 49ms");
        assert_eq!(f(30_000), "30s");
        assert_eq!(f(65_400), "1m 5s");
        assert_eq!(f(300_000), "5m");
        assert_eq!(f(3_600_000), "1h");
        assert_eq!(format_duration(Duration::from_micros(1_500)), "1ms");
    }
}
