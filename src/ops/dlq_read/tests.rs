use super::*;

fn h(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (key.to_string(), Some(value.as_bytes().to_vec()))
}

#[test]
fn original_headers_stop_at_the_dead_letter_block() {
    let record = DlqRecord {
        headers: vec![
            h("traceparent", "00-original"),
            h("sluice-id", "r-1"),
            h(headers::ERROR_REASON, "bad"),
            h(headers::WORKER, "w"),
            h(headers::SOURCE_TOPIC, "req"),
            h("traceparent", "00-dead-letter-write"),
        ],
        ..DlqRecord::default()
    };
    assert_eq!(
        record.original_headers(),
        vec![h("traceparent", "00-original"), h("sluice-id", "r-1")]
    );
    let plain = DlqRecord {
        headers: vec![h("a", "1"), h("b", "2")],
        ..DlqRecord::default()
    };
    assert_eq!(plain.original_headers(), plain.headers);
}

#[test]
fn id_comes_from_the_header_else_the_value() {
    let mut record = DlqRecord {
        value: Some(br#"{"v":1,"id":"from-value","body":{}}"#.to_vec()),
        ..DlqRecord::default()
    };
    assert_eq!(record.id().as_deref(), Some("from-value"));
    record.headers.push(h(headers::ID, "from-header"));
    assert_eq!(record.id().as_deref(), Some("from-header"));
    record.headers.clear();
    record.value = Some(b"\xff not json".to_vec());
    assert_eq!(record.id(), None);
}

#[test]
fn time_prefers_the_error_header_and_falls_back_to_the_timestamp() {
    let mut record = DlqRecord {
        timestamp_ms: Some(5),
        ..DlqRecord::default()
    };
    assert_eq!(record.at_ms(), Some(5));
    record
        .headers
        .push(h(headers::ERROR_AT, "1970-01-01T00:00:01.000Z"));
    assert_eq!(record.at_ms(), Some(1000));
    record.headers.push(h(headers::ERROR_ATTEMPTS, "3"));
    assert_eq!(record.attempts(), Some(3));
}
