use super::summary::*;
use super::*;
use crate::envelope::headers;

fn h(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (key.to_string(), Some(value.as_bytes().to_vec()))
}

fn dead_letter(source: Option<&str>) -> DlqRecord {
    let mut record_headers = vec![
        h("traceparent", "00-original"),
        h(REPLAYED_FROM, "sluice.dlq/0/1"),
        h(headers::ID, "r-1"),
        h(headers::ERROR_REASON, "not valid JSON"),
        h(headers::ERROR_CLASS, "decode"),
        h(headers::ERROR_AT, "2025-11-24T16:00:00.123Z"),
        h(headers::ERROR_ATTEMPTS, "0"),
        h(headers::WORKER, "w-1"),
    ];
    if let Some(source) = source {
        record_headers.push(h(headers::SOURCE_TOPIC, source));
    }
    record_headers.push(h(headers::SOURCE_PARTITION, "2"));
    record_headers.push(h(headers::SOURCE_OFFSET, "41"));
    record_headers.push(h("traceparent", "00-dead-letter-write"));
    DlqRecord {
        topic: "sluice.dlq".into(),
        partition: 0,
        offset: 9,
        timestamp_ms: Some(1),
        key: Some(b"r-1".to_vec()),
        value: Some(b"\xff raw".to_vec()),
        headers: record_headers,
    }
}

#[test]
fn replay_keeps_the_request_and_says_where_it_came_from() {
    let replay = plan(
        &dead_letter(Some("sluice.requests.batch")),
        None,
        "sluice.requests",
    );
    assert_eq!(
        replay.topic, "sluice.requests.batch",
        "back to its source topic"
    );
    assert_eq!(replay.key.as_deref(), Some(&b"r-1"[..]));
    assert_eq!(replay.value.as_deref(), Some(&b"\xff raw"[..]));
    assert_eq!(
        replay.headers,
        vec![
            h("traceparent", "00-original"),
            h(headers::ID, "r-1"),
            h(REPLAYED_FROM, "sluice.dlq/0/9"),
        ],
        "original headers only, an older replayed-from replaced"
    );
    assert_eq!(replay.from, "sluice.dlq/0/9");
}

#[test]
fn destination_is_to_then_source_then_the_request_topic() {
    let record = dead_letter(Some("src"));
    assert_eq!(plan(&record, Some("elsewhere"), "req").topic, "elsewhere");
    assert_eq!(plan(&dead_letter(None), None, "req").topic, "req");
    let mut empty_source = dead_letter(None);
    empty_source.headers.push(h(headers::SOURCE_TOPIC, ""));
    assert_eq!(plan(&empty_source, None, "req").topic, "req");
}

#[test]
fn a_tombstone_stays_a_tombstone() {
    let mut record = dead_letter(Some("src"));
    record.key = None;
    record.value = None;
    let replay = plan(&record, None, "req");
    assert_eq!((replay.key, replay.value), (None, None));
}

#[test]
fn reasons_are_counted_without_their_detail() {
    assert_eq!(
        reason_kind("not valid JSON for a version-1 request: expected value at line 1 column 1"),
        "not valid JSON for a version-1 request"
    );
    assert_eq!(reason_kind("empty message value"), "empty message value");
    assert_eq!(reason_kind(""), "");
}

#[test]
fn summary_prints_counts_by_reason_and_destination() {
    let mut summary = Summary {
        dlq_topic: "sluice.dlq".into(),
        dry_run: true,
        read: 4,
        matched: 3,
        ..Summary::default()
    };
    summary.by_reason.insert("not valid JSON".into(), 2);
    summary.by_reason.insert("bad\nversion".into(), 1);
    summary.by_topic.insert("req".into(), 3);
    let text = render_summary(&summary);
    assert_eq!(
        text,
        "dry run: 3 of 4 dead letters on sluice.dlq would be replayed; nothing was written\n\
         \x20 by reason:\n\
         \x20        1  bad\\nversion\n\
         \x20        2  not valid JSON\n\
         \x20 by destination:\n\
         \x20        3  req\n"
    );
    let json: serde_json::Value = serde_json::from_str(&summary_json(&summary)).unwrap();
    assert_eq!(json["matched"], 3);
    assert_eq!(json["by_reason"]["not valid JSON"], 2);
}
