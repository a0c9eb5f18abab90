use super::*;
use crate::envelope::headers;

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
