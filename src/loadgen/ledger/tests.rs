//! Dedup, refusals and the counts the report is built from.

use super::*;
use std::time::Duration;

fn outcome(status: &'static str, queue_ms: u64) -> Outcome {
    Outcome {
        status,
        failure: (status != "ok").then(|| status.to_string()),
        queue_ms: Some(queue_ms),
    }
}

#[test]
fn first_final_reply_wins_and_later_ones_are_duplicates() {
    let ledger = Ledger::default();
    ledger.sending("a");
    ledger.accepted("a");
    let t = Instant::now();
    assert_eq!(ledger.finish("a", outcome("ok", 5), t), Recorded::First);
    let later = t + Duration::from_secs(1);
    assert_eq!(
        ledger.finish("a", outcome("error", 9), later),
        Recorded::Duplicate
    );
    assert_eq!(
        ledger.finish("a", outcome("ok", 9), later),
        Recorded::Duplicate
    );
    let books = ledger.snapshot();
    assert_eq!(books.completed.get("ok"), Some(&1));
    assert_eq!(books.completed.get("error"), None);
    assert!(books.failed.is_empty());
    assert_eq!(books.duplicates, 2);
    assert_eq!(books.unanswered, 0);
    assert_eq!(books.queue_ms, vec![5.0]);
    assert_eq!(books.last_outcome, Some(t));
}

#[test]
fn replies_for_ids_not_sent_are_foreign() {
    let ledger = Ledger::default();
    ledger.sending("mine");
    let recorded = ledger.finish("old-run", outcome("ok", 1), Instant::now());
    assert_eq!(recorded, Recorded::Foreign);
    let books = ledger.snapshot();
    assert_eq!(
        (books.foreign, books.finished(), books.unanswered),
        (1, 0, 1)
    );
}

#[test]
fn a_reply_may_overtake_the_acceptance() {
    let ledger = Ledger::default();
    ledger.sending("a");
    ledger.finish("a", outcome("ok", 1), Instant::now());
    ledger.accepted("a");
    let books = ledger.snapshot();
    assert_eq!((books.accepted, books.pending, books.unanswered), (1, 0, 0));
}

#[test]
fn refused_requests_are_not_waited_for() {
    let ledger = Ledger::default();
    for id in ["a", "b", "c"] {
        ledger.sending(id);
    }
    ledger.refused("a", "503".into());
    ledger.refused("b", "503".into());
    ledger.accepted("c");
    ledger.refused("c", "late".into()); // a second answer changes nothing
    let books = ledger.snapshot();
    assert_eq!(books.refused.get("503"), Some(&2));
    assert_eq!(books.refused.len(), 1);
    assert_eq!((books.accepted, books.pending, books.unanswered), (1, 0, 1));
    let p = ledger.progress();
    assert_eq!(
        (p.sent, p.accepted, p.pending, p.unanswered, p.finished),
        (3, 1, 0, 1, 0)
    );
}

#[test]
fn failures_are_counted_by_cause() {
    let ledger = Ledger::default();
    for (i, status) in ["ok", "error", "error", "expired"].into_iter().enumerate() {
        let id = i.to_string();
        ledger.sending(&id);
        ledger.accepted(&id);
        ledger.finish(&id, outcome(status, 0), Instant::now());
    }
    let books = ledger.snapshot();
    assert_eq!(books.finished(), 4);
    assert_eq!(books.failed.get("error"), Some(&2));
    assert_eq!(books.failed.get("expired"), Some(&1));
    assert_eq!(books.latency_ms.len(), 4);
}
