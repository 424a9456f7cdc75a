//! Durations in flags, environment variables and files: `250ms`, `30s`, `10m`, `1h`, or a
//! plain number of seconds. The same grammar in every binary, and printed back the same way.

use std::time::Duration;

/// Parses `250ms`, `30s`, `10m`, `1h` or a plain number of seconds (`90`).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 250ms, 30s, 10m)"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{s}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    }
}

/// Writes `d` in the grammar [`parse`] reads, in the largest unit that is exact: `1h`, `10m`,
/// `30s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_plain_seconds_and_prints_them_back() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 10m "), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse("10 parsecs").is_err());
        assert!(parse("s").is_err());
        assert!(parse("99999999999999999999h").is_err());
        assert!(parse(&format!("{}h", u64::MAX)).is_err());
        for text in ["0s", "250ms", "1500ms", "30s", "10m", "1h", "25h"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
