//! Dead letters: a message the worker cannot process is written to the DLQ topic with
//! its original key, value and headers, plus `sluice-error-*` headers saying why, when,
//! by which worker and after how many attempts — then its offset may be committed.
//!
//! sluice's headers follow the original ones, which are kept as they came (they may
//! hold `sluice-error-*` headers of an earlier dead-lettering): readers take the last
//! header of each name, as Kafka's `Headers.lastHeader` does.
//!
//! A message can be too large to dead-letter as it is: the headers add to a value that
//! was already near the limit the broker took it under, and the worker's producer may
//! allow less than the broker (librdkafka's default `message.max.bytes` is 1,000,000;
//! Kafka's broker default 1,048,588). Retrying cannot help, and would stall the
//! partition's commits for good, so [`DeadLetter::shrink`] gives a smaller record that
//! still says why and where the original is (source topic, partition and offset).

use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;

use crate::envelope::headers;

/// Why a message is dead-lettered.
#[derive(Debug, Clone)]
pub struct Reason {
    /// Stable class for the `sluice-error-class` header (`decode`, ...).
    pub class: &'static str,
    /// Human-readable reason.
    pub message: String,
    pub attempts: u32,
}

/// The DLQ record's parts, owned so the write can be retried.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Original headers first (a header without a value stays without one), then
    /// sluice's error headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// How many of `headers` are the original message's.
    original_headers: usize,
}

impl DeadLetter {
    pub fn new(message: &OwnedMessage, reason: &Reason, worker_id: &str) -> Self {
        let mut record_headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let original_headers = record_headers.len();
        let at = httpdate_rfc3339(std::time::SystemTime::now());
        for (key, value) in [
            (headers::ERROR_REASON, reason.message.clone()),
            (headers::ERROR_CLASS, reason.class.to_string()),
            (headers::ERROR_AT, at),
            (headers::ERROR_ATTEMPTS, reason.attempts.to_string()),
            (headers::WORKER, worker_id.to_string()),
            (headers::SOURCE_TOPIC, message.topic().to_string()),
            (headers::SOURCE_PARTITION, message.partition().to_string()),
            (headers::SOURCE_OFFSET, message.offset().to_string()),
        ] {
            record_headers.push((key.to_string(), Some(value.into_bytes())));
        }
        Self {
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: record_headers,
            original_headers,
        }
    }

    /// A smaller dead letter for a cluster that refused this one as too large: first
    /// without the value, then also without the original key and headers; each step
    /// noted in a `sluice-error-dropped` header. `None` once nothing is left to drop.
    pub(crate) fn shrink(&self) -> Option<DeadLetter> {
        let mut smaller = self.clone();
        let dropped = if !self.value.is_empty() {
            smaller.value.clear();
            format!("value ({} bytes)", self.value.len())
        } else if self.original_headers > 0 || !self.key.is_empty() {
            smaller.headers.drain(..self.original_headers);
            smaller.original_headers = 0;
            smaller.key.clear();
            "key and original headers".to_string()
        } else {
            return None;
        };
        smaller.headers.push((
            headers::ERROR_DROPPED.to_string(),
            Some(
                format!("{dropped}: the record was too large for the dead-letter topic")
                    .into_bytes(),
            ),
        ));
        Some(smaller)
    }

    /// The key as text for the producer (original bytes when they are UTF-8).
    pub(crate) fn key_text(&self) -> String {
        match std::str::from_utf8(&self.key) {
            Ok(text) => text.to_string(),
            Err(_) => self.key.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// RFC 3339 UTC timestamp with millisecond precision, e.g. `2026-11-22T03:30:00.123Z`.
pub(crate) fn httpdate_rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(httpdate_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        assert_eq!(httpdate_rfc3339(t), "2025-11-24T16:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&httpdate_rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn a_dead_letter_too_large_sheds_its_value_then_its_key_and_original_headers() {
        let original = OwnedMessage::new(
            Some(vec![b'x'; 2_000]),
            Some(b"k1".to_vec()),
            "sluice.requests".into(),
            Timestamp::CreateTime(1),
            0,
            7,
            Some(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some("00-abc"),
            })),
        );
        let reason = Reason {
            class: "decode",
            message: "not JSON".into(),
            attempts: 0,
        };
        let dl = DeadLetter::new(&original, &reason, "w-1");
        let names = |d: &DeadLetter| d.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();

        let first = dl.shrink().expect("the value can go");
        assert!(first.value.is_empty());
        assert_eq!(first.key, b"k1");
        assert_eq!(first.headers[..dl.headers.len()], dl.headers[..]);
        let (name, note) = first.headers.last().unwrap();
        assert_eq!(name, headers::ERROR_DROPPED);
        assert!(String::from_utf8_lossy(note.as_deref().unwrap()).starts_with("value (2000 bytes)"));

        let second = first.shrink().expect("key and original headers can go");
        assert!(second.key.is_empty() && second.value.is_empty());
        assert!(!names(&second).contains(&"traceparent".to_string()));
        for kept in [
            headers::ERROR_REASON,
            headers::SOURCE_OFFSET,
            headers::WORKER,
        ] {
            assert!(names(&second).contains(&kept.to_string()), "{kept} kept");
        }
        assert_eq!(
            names(&second)
                .iter()
                .filter(|n| *n == headers::ERROR_DROPPED)
                .count(),
            2
        );
        assert!(second.shrink().is_none(), "nothing left to drop");
    }

    #[test]
    fn dead_letter_keeps_the_original_and_says_why() {
        let original = OwnedMessage::new(
            Some(b"\xff\xfe garbage".to_vec()),
            Some(b"k1".to_vec()),
            "sluice.requests".into(),
            Timestamp::CreateTime(1),
            2,
            41,
            Some(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "traceparent",
                        value: Some("00-abc"),
                    })
                    .insert(Header::<&str> {
                        key: "marker",
                        value: None,
                    }),
            ),
        );
        let reason = Reason {
            class: "decode",
            message: "not JSON".into(),
            attempts: 0,
        };
        let dl = DeadLetter::new(&original, &reason, "w-1");
        assert_eq!(dl.value, b"\xff\xfe garbage");
        assert_eq!(dl.key_text(), "k1");
        let get = |k: &str| {
            dl.headers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| String::from_utf8(v.clone().unwrap()).unwrap())
        };
        assert_eq!(
            dl.headers[0].0, "traceparent",
            "original headers come first"
        );
        assert_eq!(
            dl.headers[1],
            ("marker".to_string(), None),
            "a header without a value stays without one"
        );
        assert_eq!(get(headers::ERROR_REASON).unwrap(), "not JSON");
        assert_eq!(get(headers::ERROR_CLASS).unwrap(), "decode");
        assert_eq!(get(headers::WORKER).unwrap(), "w-1");
        assert_eq!(get(headers::ERROR_ATTEMPTS).unwrap(), "0");
        assert_eq!(get(headers::SOURCE_PARTITION).unwrap(), "2");
        assert_eq!(get(headers::SOURCE_OFFSET).unwrap(), "41");
        assert!(get(headers::ERROR_AT).unwrap().ends_with('Z'));
    }
}
