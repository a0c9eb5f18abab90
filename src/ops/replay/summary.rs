//! What `sluice dlq replay` reports at the end: counts (read, matched, replayed,
//! skipped, failed) and what was or would be replayed, by reason and by destination.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a replay did; printed at the end.
#[derive(Debug, Default, Serialize)]
pub(super) struct Summary {
    pub dlq_topic: String,
    pub dry_run: bool,
    /// Dead letters read, matching or not.
    pub read: u64,
    /// Matching the filters (up to `--limit`); after an interrupt, some of them were
    /// neither replayed nor skipped.
    pub matched: u64,
    pub replayed: u64,
    /// Read but not replayed: not matching the filters, or aimed at the DLQ itself.
    pub skipped: u64,
    pub failed: u64,
    /// Written (or, in a dry run, to be written) by [`reason_kind`].
    pub by_reason: BTreeMap<String, u64>,
    /// Written (or to be written) by destination topic.
    pub by_topic: BTreeMap<String, u64>,
}

/// A reason without its detail: the text before the first `": "`, so that "not valid
/// JSON ...: expected value at line 1 column 1" and "...: expected ident at line 1
/// column 2" count together.
pub(super) fn reason_kind(reason: &str) -> &str {
    reason.split(": ").next().unwrap_or(reason).trim()
}

/// The summary as one JSON object.
pub(super) fn summary_json(summary: &Summary) -> String {
    serde_json::to_string(summary).expect("a Summary always serializes")
}

/// The summary as text: the counts, then counts by reason and by destination.
pub(super) fn render_summary(summary: &Summary) -> String {
    let mut out = if summary.dry_run {
        format!(
            "dry run: {} of {} dead letters on {} would be replayed; nothing was written\n",
            summary.by_topic.values().sum::<u64>(),
            summary.read,
            summary.dlq_topic
        )
    } else {
        format!(
            "matched {}  replayed {}  skipped {}  failed {}  (read {} from {})\n",
            summary.matched,
            summary.replayed,
            summary.skipped,
            summary.failed,
            summary.read,
            summary.dlq_topic
        )
    };
    for (title, counts) in [
        ("by reason", &summary.by_reason),
        ("by destination", &summary.by_topic),
    ] {
        if !counts.is_empty() {
            out.push_str(&format!("  {title}:\n"));
        }
        for (name, count) in counts {
            let name = crate::ops::preview::display(name.as_bytes(), 120);
            let name = if name.is_empty() { "-" } else { &name };
            out.push_str(&format!("  {count:>8}  {name}\n"));
        }
    }
    out
}
