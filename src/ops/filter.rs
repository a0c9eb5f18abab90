//! Which dead letters an operator command acts on: `--reason`, `--class`, `--id`,
//! `--since`/`--until` (RFC 3339 or unix ms) and `--limit`, shared by `dlq inspect` and
//! `dlq replay` so both select exactly the same records.

use super::dlq_read::DlqRecord;

/// Selection flags shared by the `dlq` subcommands.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only dead letters whose reason (`sluice-error-reason`) contains TEXT, ignoring case.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Only dead letters of this error class (`sluice-error-class`, e.g. `decode`).
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    /// Only dead letters of this request id (`sluice-id` header, else the value's `id`).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Only dead letters written at or after this time (`sluice-error-at`, else the record
    /// timestamp), e.g. 2026-11-22T03:30:00Z.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms, conflicts_with = "since_ms")]
    pub since: Option<i64>,
    /// Like --since, in unix milliseconds.
    #[arg(long, value_name = "UNIX_MS")]
    pub since_ms: Option<i64>,
    /// Only dead letters written before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339_ms, conflicts_with = "until_ms")]
    pub until: Option<i64>,
    /// Like --until, in unix milliseconds.
    #[arg(long, value_name = "UNIX_MS")]
    pub until_ms: Option<i64>,
    /// Stop after N matching dead letters (oldest first within each partition).
    #[arg(long, short = 'n', value_name = "N")]
    pub limit: Option<u64>,
}

/// The compiled selection: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Lower-cased substring of the reason.
    reason: Option<String>,
    class: Option<String>,
    id: Option<String>,
    /// Inclusive lower bound, unix ms.
    since_ms: Option<i64>,
    /// Exclusive upper bound, unix ms.
    until_ms: Option<i64>,
    pub limit: Option<u64>,
}

impl From<&FilterArgs> for Filter {
    fn from(args: &FilterArgs) -> Self {
        Self {
            reason: args.reason.as_ref().map(|r| r.to_lowercase()),
            class: args.class.clone(),
            id: args.id.clone(),
            since_ms: args.since.or(args.since_ms),
            until_ms: args.until.or(args.until_ms),
            limit: args.limit,
        }
    }
}

impl Filter {
    /// Whether `record` is selected. A time bound excludes records with no known time.
    pub fn matches(&self, record: &DlqRecord) -> bool {
        if let Some(needle) = &self.reason {
            let reason = record.reason().unwrap_or_default().to_lowercase();
            if !reason.contains(needle.as_str()) {
                return false;
            }
        }
        if self.class.is_some() && record.class() != self.class {
            return false;
        }
        if self.id.is_some() && record.id() != self.id {
            return false;
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(at) = record.at_ms() else {
                return false;
            };
            if self.since_ms.is_some_and(|since| at < since)
                || self.until_ms.is_some_and(|until| at >= until)
            {
                return false;
            }
        }
        true
    }

    /// Whether `matched` records are all that may be taken.
    pub fn limit_reached(&self, matched: u64) -> bool {
        self.limit.is_some_and(|limit| matched >= limit)
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-22T03:30:00Z`, `...00.123+02:00`, a space for
/// `T` and a lower-case `z` allowed) into unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
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
mod tests;
