//! Poison input: 10,000 malformed messages of many kinds interleaved with 1,000 valid
//! requests, written straight onto the request topic. Every malformed one must reach the
//! dead-letter topic once, unchanged, with a reason; every valid one must be answered
//! `ok`; the worker must never restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Map, Value};

use crate::support::pipeline::{
    collect_replies, header, read_topic, reader_config, request_value, sluice_env, MockLlm, Topics,
    Worker,
};
use crate::support::{unique_name, Tansu};

const VALID: usize = 1_000;
/// Header that tells the test which malformed message a dead letter was.
const MARK: &str = "chaos-poison";
/// Payload sizes of the `huge` class: up to the largest record a Kafka broker takes by
/// default (`message.max.bytes` 1,048,588), past the 1,000,000 bytes a librdkafka
/// producer sends by default.
const HUGE_SIZES: [usize; 4] = [900_000, 990_000, 999_000, 1_040_000];

/// Record headers as written: a `None` value is a header without one.
type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// One record to write.
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HeaderList,
    /// `Some((class, n))` for a malformed one, `None` for a valid request.
    poison: Option<(&'static str, usize)>,
    /// The request id of a valid one.
    id: Option<String>,
}

/// The malformed classes and how many of each (10,000 in all).
const CLASSES: [(&str, usize); 10] = [
    ("random_bytes", 2_000),
    ("invalid_utf8", 1_000),
    ("wrong_version", 1_500),
    ("missing_fields", 1_500),
    ("bad_id", 500),
    ("empty_or_null", 500),
    ("not_an_object", 500),
    ("truncated", 1_000),
    ("huge", 20),
    ("odd_headers", 1_480),
];

fn malformed(class: &str, n: usize, rng: &mut StdRng) -> (Option<Vec<u8>>, HeaderList) {
    let id = format!("poison-{n}");
    let good = request_value(&id, "hi", json!({}));
    // A valid request with one field changed (`None` removes it).
    let changed = |field: &str, value: Option<Value>| {
        let mut request: Map<String, Value> =
            serde_json::from_slice(&good).expect("request_value writes an object");
        match value {
            Some(value) => request.insert(field.to_string(), value),
            None => request.remove(field),
        };
        Some(serde_json::to_vec(&request).expect("JSON values serialize"))
    };
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let mut headers = Vec::new();
    let value = match class {
        "random_bytes" => {
            let len = rng.random_range(1..2_000);
            Some((0..len).map(|_| rng.random::<u8>()).collect())
        }
        "invalid_utf8" => {
            // The prompt "hi" with its "i" replaced by a byte that is not UTF-8 there.
            let mut v = good.clone();
            let at = v
                .windows(4)
                .position(|w| w == b"\"hi\"")
                .expect("the prompt is in the request")
                + 2;
            v[at] = [0x80, 0xff, 0xc3, 0xfe][n % 4];
            Some(v)
        }
        "wrong_version" => {
            let v = ["2", "0", "999", "\"1\"", "1.0", "-1", "null", "true", "[1]"][n % 9];
            changed("v", Some(serde_json::from_str(v).expect("a JSON literal")))
        }
        "missing_fields" => match n % 5 {
            0 => changed("v", None),
            1 => changed("id", None),
            2 => changed("body", None),
            3 => changed("body", Some(json!("text"))),
            _ => changed("body", Some(Value::Null)),
        },
        "bad_id" => changed(
            "id",
            Some(match n % 4 {
                0 => json!(""),
                1 => json!("x".repeat(300)),
                2 => json!("a/b"),
                _ => json!(42),
            }),
        ),
        "empty_or_null" => (n % 2 == 0).then(Vec::new),
        "not_an_object" => text(["[]", "null", "\"request\"", "123", "{}"][n % 5]),
        "truncated" => {
            let cut = rng.random_range(1..good.len() - 1);
            Some(good[..cut].to_vec())
        }
        "huge" => {
            let size = HUGE_SIZES[n % HUGE_SIZES.len()];
            if n % 2 == 0 {
                // Well-formed JSON of a version this worker does not read.
                let filler = "a".repeat(size - 100);
                let request = json!({"v": 2, "id": id, "body": {"messages": [{"role": "user", "content": filler}]}});
                Some(serde_json::to_vec(&request).expect("JSON values serialize"))
            } else {
                Some((0..size).map(|_| rng.random::<u8>()).collect())
            }
        }
        "odd_headers" => {
            headers.extend([
                (
                    "traceparent".to_string(),
                    Some(b"00-zz-not-a-trace-01".to_vec()),
                ),
                ("binary".to_string(), Some(vec![0xff, 0x00, 0xfe])),
                ("no-value".to_string(), None),
                (String::new(), Some(b"empty name".to_vec())),
                ("dup".to_string(), Some(b"1".to_vec())),
                ("dup".to_string(), Some(b"2".to_vec())),
                ("sluice-error-reason".to_string(), Some(b"spoofed".to_vec())),
                ("long".to_string(), Some(vec![b'x'; 10_000])),
            ]);
            for i in 0..(n % 50) {
                headers.push((format!("h{i}"), Some(i.to_string().into_bytes())));
            }
            text(&format!("not json {n}"))
        }
        other => unreachable!("class {other}"),
    };
    (value, headers)
}

/// What each class's dead-letter reasons must say (any of these).
fn expected_reason(class: &str) -> &'static [&'static str] {
    match class {
        "wrong_version" => &["version", "field `v`"],
        "missing_fields" => &["missing field", "invalid type"],
        "bad_id" => &["request id must be", "invalid type"],
        "empty_or_null" => &["empty message value"],
        "huge" => &["JSON", "version"],
        _ => &["JSON"],
    }
}

/// The start of a reason, for tallies: up to the first `:` or the line/column part.
fn reason_kind(reason: &str) -> String {
    let head = reason.split(" at line").next().unwrap_or(reason);
    head.chars().take(70).collect()
}

fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key: key.as_str(),
            value: value.as_deref(),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "11,000 messages; run by `make test-chaos`"]
async fn ten_thousand_malformed_messages_all_reach_the_dlq_and_valid_ones_are_answered() {
    let _serial = crate::serial().await;
    let started = Instant::now();
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let mock = MockLlm::start(64, 5).await;
    let env = sluice_env(&tansu.bootstrap(), &topics, &mock.url());
    let mut worker = Worker::start(&env).await;
    let pid = worker.process.pid();

    let mut rng = StdRng::seed_from_u64(20_261_122);
    let mut records = Vec::new();
    let mut n = 0;
    for (class, count) in CLASSES {
        for _ in 0..count {
            let (value, mut headers) = malformed(class, n, &mut rng);
            headers.push((MARK.to_string(), Some(format!("{class}:{n}").into_bytes())));
            let key = match (class, n % 3) {
                ("odd_headers", 0) => Some(vec![0xfe, 0xff, (n % 256) as u8]),
                ("odd_headers", 1) => None,
                _ => Some(format!("poison-{n}").into_bytes()),
            };
            records.push(Record {
                key,
                value,
                headers,
                poison: Some((class, n)),
                id: None,
            });
            n += 1;
        }
    }
    let poison_count = records.len();
    assert_eq!(poison_count, 10_000);
    for i in 0..VALID {
        let id = unique_name(&format!("valid-{i}"));
        // Every tenth valid request carries odd headers too; they must not matter.
        let headers = if i % 10 == 0 {
            vec![
                ("traceparent".to_string(), Some(b"garbage".to_vec())),
                ("binary".to_string(), Some(vec![0xff, 0xfe])),
                ("no-value".to_string(), None),
            ]
        } else {
            Vec::new()
        };
        records.push(Record {
            key: Some(id.clone().into_bytes()),
            value: Some(request_value(&id, &format!("q{i}"), json!({}))),
            headers,
            poison: None,
            id: Some(id),
        });
    }
    records.shuffle(&mut rng);

    let mut config = tansu.producer_config();
    config.set("message.max.bytes", "2000000");
    let producer: FutureProducer = config.create().unwrap();
    let topic = topics.request.clone();
    let produce_started = Instant::now();
    futures::stream::iter(&records)
        .map(|r| {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&topic).headers(owned_headers(&r.headers));
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            let producer = &producer;
            async move {
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("tansu takes every record")
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    let produced_in = produce_started.elapsed();

    let valid_ids: Vec<String> = records.iter().filter_map(|r| r.id.clone()).collect();
    let originals: HashMap<usize, &Record> = records
        .iter()
        .filter_map(|r| r.poison.map(|(_, n)| (n, r)))
        .collect();

    let dead: Arc<Mutex<Vec<rdkafka::message::OwnedMessage>>> = Arc::default();
    let sink = dead.clone();
    let mut marks = HashSet::new();
    let complete = read_topic(
        reader_config(&tansu.bootstrap()),
        &topics.dlq,
        Duration::from_secs(180),
        Duration::from_secs(3),
        move |message| {
            if let Some(mark) = header(&message, MARK) {
                marks.insert(mark);
            }
            sink.lock().expect("not poisoned").push(message);
            marks.len() >= poison_count
        },
    )
    .await;
    let dead_in = produce_started.elapsed();
    let replies = collect_replies(
        reader_config(&tansu.bootstrap()),
        &topics.reply,
        &valid_ids,
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await;

    // Check every dead letter against what was written.
    let dead = std::mem::take(&mut *dead.lock().expect("not poisoned"));
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut by_reason: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut without_value = 0;
    for letter in dead.iter() {
        let Some(mark) = header(letter, MARK) else {
            wrong.push(format!("a dead letter without the {MARK} header"));
            continue;
        };
        let (class, n) = mark.split_once(':').expect("class:n");
        let n: usize = n.parse().expect("a number");
        *seen.entry(n).or_default() += 1;
        let Record { value, headers, .. } = originals[&n];
        let reason = header(letter, "sluice-error-reason").unwrap_or_default();
        let error_class = header(letter, "sluice-error-class").unwrap_or_default();
        *by_reason
            .entry((class.to_string(), reason_kind(&reason)))
            .or_default() += 1;
        let kept: HeaderList = letter
            .headers()
            .map(|h| {
                h.iter()
                    .take(headers.len())
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        // Too large to dead-letter whole: written without the value, saying so.
        let dropped = header(letter, "sluice-error-dropped");
        without_value += usize::from(dropped.is_some());
        let payload = letter.payload().unwrap_or_default();
        let value_kept = match &dropped {
            None => payload == value.as_deref().unwrap_or_default(),
            Some(note) => {
                let size = value.as_ref().map_or(0, Vec::len);
                payload.is_empty() && note.starts_with(&format!("value ({size} bytes)"))
            }
        };
        let problems = [
            (error_class != "decode").then(|| format!("class {error_class:?}")),
            (!expected_reason(class).iter().any(|r| reason.contains(r)))
                .then(|| format!("reason {reason:?}")),
            (!value_kept).then(|| {
                format!(
                    "value not kept ({} bytes, dropped: {dropped:?})",
                    payload.len()
                )
            }),
            (kept != *headers).then(|| {
                let names: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
                format!("original headers not kept first (got names {names:?})")
            }),
            header(letter, "sluice-worker")
                .is_none()
                .then(|| "no sluice-worker".to_string()),
            (header(letter, "sluice-source-topic").as_deref() != Some(topics.request.as_str()))
                .then(|| "no sluice-source-topic".to_string()),
        ];
        for problem in problems.into_iter().flatten() {
            if wrong.len() < 20 {
                wrong.push(format!("{mark}: {problem}"));
            }
        }
    }
    let missing: BTreeMap<&str, usize> = originals
        .iter()
        .filter(|(n, _)| !seen.contains_key(n))
        .filter_map(|(_, r)| r.poison)
        .fold(BTreeMap::new(), |mut m, (class, _)| {
            *m.entry(class).or_default() += 1;
            m
        });
    let repeated: usize = seen.values().map(|c| c - 1).sum();
    let lost_valid = replies.missing(&valid_ids).len();
    let valid_not_ok = replies
        .by_id
        .values()
        .filter(|c| c[0]["status"] != "ok")
        .count();

    let metrics = worker.metrics().await;
    let dead_letters_total = metrics.value("sluice_worker_dead_letters_total", &[]);
    let ok_total = metrics
        .get("sluice_worker_messages_total", &[("outcome", "ok")])
        .unwrap_or(0.0);
    let produce_failures = metrics.value("sluice_worker_produce_failures_total", &[]);
    let running = worker.process.try_exit_status().is_none() && worker.process.pid() == pid;

    eprintln!("poison: dead letters by class and reason:");
    for ((class, reason), count) in &by_reason {
        eprintln!("  {class:<15} {count:>5}  {reason}");
    }
    eprintln!(
        "poison: {poison_count} malformed + {VALID} valid written in {:.1} s; dead-lettered {} distinct \
         ({} records, {repeated} repeated, {without_value} without their value as too large), \
         missing {missing:?}; valid answered {} (not ok {valid_not_ok}, \
         lost {lost_valid}); worker metrics: dead_letters_total {dead_letters_total}, ok {ok_total}, \
         failed Kafka writes {produce_failures}; same worker process running: {running}; DLQ complete: \
         {complete} after {:.1} s; total {:.1} s",
        produced_in.as_secs_f64(),
        seen.len(),
        dead.len(),
        replies.by_id.len(),
        dead_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        wrong.is_empty(),
        "wrong dead letters:\n{}",
        wrong.join("\n")
    );
    assert!(
        missing.is_empty(),
        "malformed messages not dead-lettered: {missing:?}"
    );
    assert_eq!(
        repeated, 0,
        "no restart, so no message is dead-lettered twice"
    );
    assert_eq!(
        (lost_valid, valid_not_ok),
        (0, 0),
        "valid requests lost / not ok"
    );
    assert!(
        running,
        "the worker process restarted or exited:\n{}",
        worker.process.logs()
    );
    assert_eq!(dead_letters_total, poison_count as f64);
    assert_eq!(ok_total, VALID as f64);
    drop(mock);
}
