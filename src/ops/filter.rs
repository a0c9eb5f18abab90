//! Which dead letters an operator command acts on: `--reason`, `--class`, `--id`,
//! `--since`/`--until` (RFC 3339 or unix ms) and `--limit`, shared by `dlq inspect` and
//! `dlq replay` so both select exactly the same records.

use super::dlq_read::DlqRecord;
use super::rfc3339::parse_rfc3339_ms;

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
pub(crate) struct Filter {
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
    pub(crate) fn limit_reached(&self, matched: u64) -> bool {
        self.limit.is_some_and(|limit| matched >= limit)
    }
}

#[cfg(test)]
mod tests;
