use super::*;
use crate::envelope::headers;

fn sample() -> DlqRecord {
    let h = |k: &str, v: &[u8]| (k.to_string(), Some(v.to_vec()));
    DlqRecord {
        topic: "sluice.dlq".into(),
        partition: 0,
        offset: 7,
        timestamp_ms: Some(1_764_000_000_123),
        key: Some(b"poison-5".to_vec()),
        value: Some(b"\xff\xfe\x00 and text".to_vec()),
        headers: vec![
            h("origin", b"test\n"),
            h(headers::ERROR_REASON, b"not valid JSON"),
            h(headers::ERROR_CLASS, b"decode"),
            h(headers::ERROR_AT, b"2025-11-24T16:00:00.123Z"),
            h(headers::ERROR_ATTEMPTS, b"0"),
            h(headers::WORKER, b"w-1"),
            h(headers::SOURCE_TOPIC, b"sluice.requests"),
            h(headers::SOURCE_PARTITION, b"2"),
            h(headers::SOURCE_OFFSET, b"41"),
        ],
    }
}

#[test]
fn text_block_shows_every_field_escaped() {
    let mut out = Vec::new();
    write_text(&mut out, &sample(), 200).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "sluice.dlq/0@7  2025-11-24T16:00:00.123Z  class=decode  attempts=0  worker=w-1\n\
         \x20 reason   not valid JSON\n\
         \x20 source   sluice.requests/2@41\n\
         \x20 id       -\n\
         \x20 key      poison-5\n\
         \x20 value    \\xff\\xfe\\0 and text (12 bytes)\n\
         \x20 headers  origin=test\\n\n\n"
    );
}

#[test]
fn json_line_carries_the_same_fields() {
    let value = to_json(&sample(), 6);
    assert_eq!(
        value["reason"], "not valid JSON",
        "only keys, values, headers are cut"
    );
    assert_eq!(value["class"], "decode");
    assert_eq!(value["attempts"], 0);
    assert_eq!(value["at_ms"], 1_764_000_000_123_i64);
    assert_eq!(value["source"]["topic"], "sluice.requests");
    assert_eq!(value["source"]["partition"], 2);
    assert_eq!(value["source"]["offset"], 41);
    assert_eq!(value["key"], "poison…");
    assert_eq!(value["id"], Value::Null);
    assert_eq!(value["value_preview"], "\\xff…");
    assert_eq!(value["value_truncated"], true);
    assert_eq!(value["value_bytes"], 12);
    assert_eq!(value["headers"], json!([["origin", "test\\n"]]));
    let line = value.to_string();
    assert!(!line.contains('\n'), "one line per record: {line}");
}

#[test]
fn missing_dead_letter_headers_show_as_dashes() {
    let record = DlqRecord {
        topic: "d".into(),
        value: None,
        ..DlqRecord::default()
    };
    let mut out = Vec::new();
    write_text(&mut out, &record, 10).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("d/0@0  -  class=-  attempts=-  worker=-\n"),
        "{text}"
    );
    assert!(text.contains("value    - (null)"), "{text}");
    assert!(!text.contains("headers"), "{text}");
}
