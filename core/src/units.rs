//! Human units for flags and config files: sizes like `10MiB` and durations like
//! `500ms` or `2s`.

use std::time::Duration;

/// A size or duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {value:?} as a {what} (examples: {examples})")]
pub struct UnitError {
    value: String,
    what: &'static str,
    examples: &'static str,
}

fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// Parses `1024`, `64KiB`, `10MiB`, `1GiB`, `5MB` (powers of ten for `kB/MB/GB`).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        what: "size",
        examples: "4096, 64KiB, 10MiB, 1GiB",
    };
    let (num, unit) = split_number(s);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mul: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mul).ok_or_else(err)
}

/// Parses `250ms`, `2s`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        value: s.to_string(),
        what: "duration",
        examples: "500ms, 2s, 5m",
    };
    let (num, unit) = split_number(s);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(err)?;
    Ok(Duration::from_millis(ms))
}

/// A span of seconds in words for people: `45 s`, `1 min`, `3 h`, `2 days`
/// (rounded down to the largest unit).
pub fn format_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s if s < 2 * 86_400 => "1 day".to_string(),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
