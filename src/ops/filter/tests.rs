use super::*;
use crate::envelope::headers;
use crate::worker::dead_letter::httpdate_rfc3339;
use std::time::{Duration, UNIX_EPOCH};

fn record(reason: &str, class: &str, at: &str, id: Option<&str>) -> DlqRecord {
    let mut headers = vec![
        (headers::ERROR_REASON.to_string(), Some(reason.into())),
        (headers::ERROR_CLASS.to_string(), Some(class.into())),
        (headers::ERROR_AT.to_string(), Some(at.into())),
    ];
    if let Some(id) = id {
        headers.insert(0, (headers::ID.to_string(), Some(id.into())));
    }
    DlqRecord {
        headers,
        ..DlqRecord::default()
    }
}

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

#[test]
fn every_condition_must_hold() {
    let at = "2026-11-22T03:30:00.000Z";
    let ms = parse_rfc3339_ms(at).unwrap();
    let r = record(
        "Not valid JSON for a version-1 request",
        "decode",
        at,
        Some("r-1"),
    );
    let filter = |args: FilterArgs| Filter::from(&args).matches(&r);
    assert!(filter(FilterArgs::default()));
    assert!(filter(FilterArgs {
        reason: Some("json".into()),
        ..Default::default()
    }));
    assert!(!filter(FilterArgs {
        reason: Some("version 2".into()),
        ..Default::default()
    }));
    assert!(filter(FilterArgs {
        class: Some("decode".into()),
        ..Default::default()
    }));
    assert!(!filter(FilterArgs {
        class: Some("deco".into()),
        ..Default::default()
    }));
    assert!(filter(FilterArgs {
        id: Some("r-1".into()),
        ..Default::default()
    }));
    assert!(!filter(FilterArgs {
        id: Some("r-2".into()),
        ..Default::default()
    }));
    assert!(filter(FilterArgs {
        since_ms: Some(ms),
        until_ms: Some(ms + 1),
        ..Default::default()
    }));
    assert!(!filter(FilterArgs {
        since: Some(ms + 1),
        ..Default::default()
    }));
    assert!(
        !filter(FilterArgs {
            until: Some(ms),
            ..Default::default()
        }),
        "until is exclusive"
    );
    assert!(!filter(FilterArgs {
        reason: Some("json".into()),
        class: Some("backend".into()),
        ..Default::default()
    }));
}

#[test]
fn a_time_bound_excludes_records_without_a_time() {
    let undated = DlqRecord::default();
    let since = Filter::from(&FilterArgs {
        since_ms: Some(0),
        ..Default::default()
    });
    assert!(!since.matches(&undated));
    assert!(Filter::default().matches(&undated));
}

#[test]
fn limit_counts_matches() {
    let filter = Filter::from(&FilterArgs {
        limit: Some(2),
        ..Default::default()
    });
    assert!(!filter.limit_reached(1));
    assert!(filter.limit_reached(2));
    assert!(!Filter::default().limit_reached(u64::MAX));
}
