//! Replay and reset (issue 20): moving the checkpoints of a live app.
//!
//! A reset is checked whole before anything is written: the app and stream must have
//! leases, a named shard must be one of them, a sequence number must lie in its shard
//! (Kinesis answers `AT_SEQUENCE_NUMBER` for it), and `latest` / `at-timestamp` are
//! resolved to the sequence number of the last record before that point. Then each
//! shard's lease is rewritten with [`rules::reset`](crate::store::rules::reset) through
//! the fenced compare-and-set driver: free at a new epoch, so the owning session gets
//! `LEASE_LOST`, its later checkpoints fail, and the group that acquires the lease next
//! reads right after the new checkpoint.

use std::str::FromStr;
use std::time::Duration;

use kinesis_butler_proto as pb;
use tracing::info;

use crate::error::ButlerError;
use crate::retrieval::kinesis::{IteratorStart, KinesisError};
use crate::retrieval::source::ShardSource;
use crate::seqnum::SequenceNumber;
use crate::store::{Checkpoint, GroupKey, Lease, Leases, Versioned};

/// Kinesis allows 5 GetRecords calls a second per shard; a resolving scan keeps to that.
const SCAN_SPACING: Duration = Duration::from_millis(200);
/// At most this many GetRecords pages per shard while resolving a position.
const SCAN_PAGES: usize = 2_000;
/// Records per GetRecords page while resolving.
const SCAN_PAGE_RECORDS: u32 = 10_000;
/// Scan windows before the target time, widened in turn; then the whole shard.
const SCAN_WINDOWS_MS: [i64; 3] = [10_000, 600_000, 86_400_000];

/// The text of the checkpoint that means "before the first record" (reset to
/// TRIM_HORIZON): sequence number 0, below every real one. Readers start at TRIM_HORIZON.
pub(crate) const BEFORE_FIRST_RECORD: &str = "0";

/// Where a reset moves the checkpoints to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ResetTo {
    /// Replay the whole shard.
    TrimHorizon,
    /// Skip what is in the shard now.
    Latest,
    /// Read from the first record at or after this time (ms since the Unix epoch).
    AtTimestamp(i64),
    /// Read the records after this sequence number (one shard only).
    Sequence(String),
}

impl FromStr for ResetTo {
    type Err = String;

    /// `trim-horizon`, `latest`, `at-timestamp=TIME` (milliseconds since the Unix epoch or
    /// RFC 3339, e.g. `2026-12-01T12:00:00Z`), `sequence=SEQ`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, value) = s.split_once('=').map_or((s, None), |(k, v)| (k, Some(v)));
        match (kind.to_ascii_lowercase().replace('_', "-").as_str(), value) {
            ("trim-horizon", None) => Ok(ResetTo::TrimHorizon),
            ("latest", None) => Ok(ResetTo::Latest),
            ("at-timestamp", Some(t)) => parse_time(t).map(ResetTo::AtTimestamp),
            ("sequence", Some(seq)) => {
                SequenceNumber::parse(seq).map(|_| ResetTo::Sequence(seq.to_owned())).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "unknown reset position {s:?}: use trim-horizon, latest, at-timestamp=TIME or sequence=SEQ"
            )),
        }
    }
}

fn parse_time(t: &str) -> Result<i64, String> {
    let ms = match t.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| format!("bad time {t:?} (milliseconds since the Unix epoch or RFC 3339): {e}"))?
            .to_millis()
            .map_err(|e| format!("bad time {t:?}: {e}"))?,
    };
    if ms <= 0 {
        return Err(format!("bad time {t:?}: must be after the Unix epoch"));
    }
    Ok(ms)
}

impl ResetTo {
    /// From the gRPC message.
    pub(crate) fn from_proto(p: Option<&pb::ResetPosition>) -> Result<Self, ButlerError> {
        use pb::reset_position::Kind;
        let Some(p) = p else {
            return Err(ButlerError::InvalidArgument("`to` is required".into()));
        };
        match Kind::try_from(p.kind) {
            Ok(Kind::TrimHorizon) => Ok(ResetTo::TrimHorizon),
            Ok(Kind::Latest) => Ok(ResetTo::Latest),
            Ok(Kind::AtTimestamp) if p.timestamp_ms > 0 => Ok(ResetTo::AtTimestamp(p.timestamp_ms)),
            Ok(Kind::AtTimestamp) => {
                Err(ButlerError::InvalidArgument("AT_TIMESTAMP needs a positive timestamp_ms".into()))
            }
            Ok(Kind::AfterSequenceNumber) => SequenceNumber::parse(&p.sequence_number)
                .map(|_| ResetTo::Sequence(p.sequence_number.clone()))
                .map_err(|e| ButlerError::InvalidArgument(e.to_string())),
            Err(_) => Err(ButlerError::InvalidArgument(format!("unknown reset position kind {}", p.kind))),
        }
    }
}

/// One shard's reset, as planned or done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShardReset {
    /// The lease before.
    pub(crate) before: Lease,
    /// The lease after (as it would be, with a dry run).
    pub(crate) after: Lease,
}

impl ShardReset {
    /// The gRPC form.
    pub(crate) fn to_proto(&self) -> pb::ShardReset {
        pb::ShardReset {
            shard_id: self.before.shard_id.clone(),
            previous_owner: self.before.owner.clone().unwrap_or_default(),
            previous_epoch: self.before.epoch,
            previous_checkpoint: self.before.checkpoint.as_text().to_owned(),
            checkpoint: self.after.checkpoint.as_text().to_owned(),
            epoch: self.after.epoch,
        }
    }
}

/// The leases a reset touches, or why it cannot be done (pure: decided on one read).
pub(crate) fn select<'a>(
    key: &GroupKey,
    leases: &'a [Versioned<Lease>],
    shard: Option<&str>,
    to: &ResetTo,
) -> Result<Vec<&'a Lease>, ButlerError> {
    if leases.is_empty() {
        return Err(ButlerError::NotFound(format!(
            "app {:?} has no leases for stream {:?} (unknown app or stream, or never read); nothing changed",
            key.app, key.stream
        )));
    }
    if matches!(to, ResetTo::Sequence(_)) && shard.is_none() {
        return Err(ButlerError::InvalidArgument(
            "a sequence number belongs to one shard: name it with --shard (shard_id); nothing changed".into(),
        ));
    }
    match shard {
        None => Ok(leases.iter().map(|l| &l.value).collect()),
        Some(id) => match leases.iter().find(|l| l.value.shard_id == id) {
            Some(l) => Ok(vec![&l.value]),
            None => Err(ButlerError::NotFound(format!(
                "stream {:?} (app {:?}) has no shard {id:?}; its shards: {}; nothing changed",
                key.stream,
                key.app,
                leases.iter().map(|l| l.value.shard_id.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        },
    }
}

fn kinesis_failure(what: String, e: KinesisError) -> ButlerError {
    match e {
        KinesisError::Throttled(_) | KinesisError::Transient(_) => {
            ButlerError::Unavailable(format!("{what}: {e}; nothing changed"))
        }
        e => ButlerError::InvalidArgument(format!("{what}: {e}; nothing changed")),
    }
}

fn at(sequence: &str) -> Checkpoint {
    Checkpoint::At { sequence: SequenceNumber::parse(sequence).expect("validated"), sub_sequence: 0 }
}

/// The checkpoint `to` means in one shard (Kinesis calls, no store change).
async fn resolve(source: &dyn ShardSource, stream: &str, shard: &str, to: &ResetTo) -> Result<Checkpoint, ButlerError> {
    match to {
        ResetTo::TrimHorizon => Ok(at(BEFORE_FIRST_RECORD)),
        ResetTo::Sequence(seq) => {
            source
                .shard_iterator(stream, shard, &IteratorStart::AtSequence(seq.clone()))
                .await
                .map_err(|e| kinesis_failure(format!("sequence number {seq} is not in shard {shard}"), e))?;
            Ok(at(seq))
        }
        ResetTo::Latest => last_before(source, stream, shard, None).await,
        ResetTo::AtTimestamp(ms) => last_before(source, stream, shard, Some(*ms)).await,
    }
}

/// The checkpoint just before `until` (ms; `None` = the tip): the last record that
/// arrived before it, found by scanning from a little before it, widening the window
/// until a record is found, then from the start of the shard.
async fn last_before(
    source: &dyn ShardSource,
    stream: &str,
    shard: &str,
    until: Option<i64>,
) -> Result<Checkpoint, ButlerError> {
    let base = until.unwrap_or_else(crate::clock::now_ms);
    let starts = SCAN_WINDOWS_MS
        .iter()
        .map(|w| IteratorStart::AtTimestamp((base - w).max(1)))
        .chain(std::iter::once(IteratorStart::TrimHorizon));
    for start in starts {
        if let Some(seq) = scan(source, stream, shard, &start, until).await? {
            return Ok(at(&seq));
        }
    }
    Ok(at(BEFORE_FIRST_RECORD))
}

/// The sequence number of the last record from `start` that arrived before `until`
/// (or before the tip).
async fn scan(
    source: &dyn ShardSource,
    stream: &str,
    shard: &str,
    start: &IteratorStart,
    until: Option<i64>,
) -> Result<Option<String>, ButlerError> {
    let what = || format!("reading shard {shard} to resolve the reset position");
    let mut iterator = source.shard_iterator(stream, shard, start).await.map_err(|e| kinesis_failure(what(), e))?;
    let mut last = None;
    for page_no in 0..SCAN_PAGES {
        if page_no > 0 {
            tokio::time::sleep(SCAN_SPACING).await;
        }
        let page = source.get_records(&iterator, SCAN_PAGE_RECORDS).await.map_err(|e| kinesis_failure(what(), e))?;
        let empty = page.records.is_empty();
        for r in page.records {
            let arrival = r.approximate_arrival_timestamp.and_then(|t| t.to_millis().ok()).unwrap_or(0);
            if until.is_some_and(|u| arrival >= u) {
                return Ok(last);
            }
            last = Some(r.sequence_number);
        }
        match page.next_iterator {
            Some(next) if !(empty && page.millis_behind_latest == 0) => iterator = next,
            _ => return Ok(last),
        }
    }
    Err(ButlerError::Unavailable(format!(
        "shard {shard} is too long to resolve the reset position in {SCAN_PAGES} pages; reset to a sequence number instead; nothing changed"
    )))
}

/// Plans (with `dry_run`) or performs a reset of `shard` (or every shard) of `key`.
pub(crate) async fn reset(
    leases: &Leases,
    source: &dyn ShardSource,
    key: &GroupKey,
    shard: Option<&str>,
    to: &ResetTo,
    dry_run: bool,
) -> Result<Vec<ShardReset>, ButlerError> {
    kinesis_butler_proto::names::validate_name("app", &key.app).map_err(ButlerError::InvalidArgument)?;
    kinesis_butler_proto::names::validate_name("stream", &key.stream).map_err(ButlerError::InvalidArgument)?;
    if let Some(s) = shard {
        kinesis_butler_proto::names::validate_name("shard_id", s).map_err(ButlerError::InvalidArgument)?;
    }
    let all = leases.list(key).await?;
    let chosen = select(key, &all, shard, to)?;
    let mut plan = Vec::with_capacity(chosen.len());
    for lease in chosen {
        let checkpoint = resolve(source, &key.stream, &lease.shard_id, to).await?;
        plan.push((lease.shard_id.clone(), checkpoint));
    }
    let mut done = Vec::with_capacity(plan.len());
    for (shard_id, checkpoint) in plan {
        if dry_run {
            let before = all.iter().find(|l| l.value.shard_id == shard_id).expect("selected").value.clone();
            let after = crate::store::rules::reset(&before, &checkpoint);
            done.push(ShardReset { before, after });
            continue;
        }
        let (before, after) = leases.reset(key, &shard_id, &checkpoint).await?;
        info!(app = %key.app, stream = %key.stream, shard = %shard_id, from = before.checkpoint.as_text(),
            to = after.checkpoint.as_text(), owner = before.owner.as_deref().unwrap_or(""), epoch = after.epoch,
            "lease reset");
        done.push(ShardReset { before, after });
    }
    if !dry_run {
        if let Err(e) = leases.store().notify(key).await {
            tracing::warn!(app = %key.app, stream = %key.stream, error = %e, "could not announce the reset");
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ShardInfo;

    fn lease(id: &str) -> Versioned<Lease> {
        Versioned {
            version: 1,
            value: Lease::new(&ShardInfo { shard_id: id.into(), parent_shard_ids: vec![], closed: false }),
        }
    }

    #[test]
    fn parses_positions() {
        assert_eq!("trim-horizon".parse(), Ok(ResetTo::TrimHorizon));
        assert_eq!("TRIM_HORIZON".parse(), Ok(ResetTo::TrimHorizon));
        assert_eq!("latest".parse(), Ok(ResetTo::Latest));
        assert_eq!("at-timestamp=1700000000000".parse(), Ok(ResetTo::AtTimestamp(1_700_000_000_000)));
        assert_eq!("at-timestamp=2023-11-14T22:13:20Z".parse(), Ok(ResetTo::AtTimestamp(1_700_000_000_000)));
        assert_eq!("sequence=42".parse(), Ok(ResetTo::Sequence("42".into())));
        for bad in ["sequence=x1", "at-timestamp=yesterday", "at-timestamp=-5", "middle", "latest=1", "sequence"] {
            assert!(bad.parse::<ResetTo>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selects_known_shards_or_says_why_not() {
        let key = GroupKey::new("a", "s");
        let all = vec![lease("s0"), lease("s1")];
        assert_eq!(select(&key, &all, None, &ResetTo::Latest).unwrap().len(), 2);
        assert_eq!(select(&key, &all, Some("s1"), &ResetTo::Latest).unwrap()[0].shard_id, "s1");
        let e = select(&key, &all, Some("s9"), &ResetTo::Latest).unwrap_err();
        assert!(matches!(&e, ButlerError::NotFound(m) if m.contains("s9") && m.contains("s0, s1")), "{e:?}");
        let e = select(&key, &[], None, &ResetTo::TrimHorizon).unwrap_err();
        assert!(matches!(&e, ButlerError::NotFound(m) if m.contains("no leases")), "{e:?}");
        let e = select(&key, &all, None, &ResetTo::Sequence("5".into())).unwrap_err();
        assert!(matches!(&e, ButlerError::InvalidArgument(m) if m.contains("--shard")), "{e:?}");
    }
}
