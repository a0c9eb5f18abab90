//! RFC 3339 times as the dead-letter tools read them: the `sluice-error-at` header the
//! worker writes, and the `--since`/`--until` flags. Parsed by hand (no date crate) for
//! exactly the forms RFC 3339 allows, to unix milliseconds.

/// Parses an RFC 3339 timestamp (`2026-11-22T03:30:00Z`, `...00.123+02:00`, a space for
/// `T` and a lower-case `z` allowed) into unix milliseconds.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2026-11-22T03:30:00Z");
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = b.get(range).ok_or_else(bad)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = num(start..i)?;
        let digits = (i - start) as u32;
        millis = if digits >= 3 {
            frac / 10_i64.pow(digits - 3)
        } else {
            frac * 10_i64.pow(3 - digits)
        };
    }
    let offset_s = match b.get(i..) {
        Some(b"Z" | b"z") => 0,
        Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
            let s = (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?) * 60;
            if *sign == b'+' {
                s
            } else {
                -s
            }
        }
        _ => return Err(bad()),
    };
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return Err(bad()),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Ok((seconds - offset_s) * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::dead_letter::httpdate_rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_round_trips_with_the_dead_letter_clock() {
        for ms in [0, 951_782_400_000, 1_764_000_000_123, 4_102_444_800_999] {
            let text = httpdate_rfc3339(UNIX_EPOCH + Duration::from_millis(ms as u64));
            assert_eq!(parse_rfc3339_ms(&text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn rfc3339_accepts_offsets_fractions_and_rejects_nonsense() {
        let base = parse_rfc3339_ms("2026-11-22T03:30:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-11-22T05:30:00+02:00"), Ok(base));
        assert_eq!(parse_rfc3339_ms("2026-11-22 01:00:00-02:30"), Ok(base));
        assert_eq!(parse_rfc3339_ms("2026-11-22t03:30:00.5z"), Ok(base + 500));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T03:30:00.123456Z"),
            Ok(base + 123)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T03:30:00",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T03:30:00+0200",
            "2026-11-22T03:30:00.Z",
            "yesterday at noon, UTC",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
