//! Dead-letter destinations: where records the handler could not process go (with
//! `on_failure` set to one), before the shard's checkpoint moves past them.
//!
//! A destination accepts entries or fails; the shard waits and tries again until it
//! accepts (nothing is lost, nothing skipped silently).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};

use crate::error::HandlerError;

/// Why a record was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The handler failed on it on every attempt.
    HandlerFailed,
    /// It was older than `max_record_age` when its turn came.
    TooOld,
}

impl GiveUpReason {
    /// `handler_failed` or `too_old`.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::HandlerFailed => "handler_failed",
            GiveUpReason::TooOld => "too_old",
        }
    }
}

/// One record given up, with what is known about its failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The app (consumer group).
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// The record's sequence number.
    pub sequence_number: String,
    /// The record's sub-sequence number (KPL aggregation; 0 otherwise).
    pub sub_sequence_number: u64,
    /// The record's partition key.
    pub partition_key: String,
    /// Handler calls that included the record and failed (0 for a record too old).
    pub attempts: u32,
    /// The handler's last error text (or why the record was too old).
    pub error: String,
    /// Why it was given up.
    pub reason: GiveUpReason,
    /// When Kinesis received the record, ms since the Unix epoch.
    pub approximate_arrival_timestamp_ms: i64,
    /// The record's payload.
    pub data: Bytes,
}

impl DeadLetterEntry {
    /// The entry as one JSON object (the data in base64), as the file and Kinesis
    /// destinations write it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "app": self.app,
            "stream": self.stream,
            "shard_id": self.shard_id,
            "sequence_number": self.sequence_number,
            "sub_sequence_number": self.sub_sequence_number,
            "partition_key": self.partition_key,
            "attempts": self.attempts,
            "error": self.error,
            "reason": self.reason.as_str(),
            "approximate_arrival_timestamp_ms": self.approximate_arrival_timestamp_ms,
            "data": base64_simd::STANDARD.encode_to_string(&self.data),
        })
        .to_string()
    }
}

/// A destination of the caller's own (the bindings' callbacks implement it).
pub trait DeadLetter: Send + Sync + 'static {
    /// Takes the entries (of one shard, in order); `Ok` once they are safely stored.
    /// An error makes the shard wait and call again with the same entries.
    fn send(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'static, Result<(), HandlerError>>;
}

/// A [`DeadLetter`] in the options: compared by identity.
#[derive(Clone)]
pub struct DeadLetterCallback(pub Arc<dyn DeadLetter>);

impl PartialEq for DeadLetterCallback {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DeadLetterCallback {}

impl fmt::Debug for DeadLetterCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterCallback")
    }
}

/// Where given-up records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// Another Kinesis stream (`kinesis:STREAM`), reached through the standard AWS
    /// settings (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_KINESIS`): one record per
    /// entry, the entry's JSON as data, the original partition key.
    Kinesis {
        /// The stream's name or ARN.
        stream: String,
    },
    /// A file of JSON lines (`file:PATH`), appended to and synced before the shard moves on.
    File(PathBuf),
    /// The caller's own destination.
    Callback(DeadLetterCallback),
}

impl DeadLetterTarget {
    /// `kinesis:STREAM` or `file:PATH`; `None` for other text.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(stream) = text.strip_prefix("kinesis:") {
            return (!stream.trim().is_empty()).then(|| DeadLetterTarget::Kinesis { stream: stream.to_owned() });
        }
        if let Some(path) = text.strip_prefix("file:") {
            return (!path.trim().is_empty()).then(|| DeadLetterTarget::File(PathBuf::from(path)));
        }
        None
    }

    /// The destination this target names.
    pub(crate) fn open(&self) -> Arc<dyn DeadLetter> {
        match self {
            DeadLetterTarget::Kinesis { stream } => Arc::new(KinesisDestination::new(stream.clone())),
            DeadLetterTarget::File(path) => Arc::new(FileDestination { path: path.clone(), lock: Arc::default() }),
            DeadLetterTarget::Callback(c) => c.0.clone(),
        }
    }
}

impl fmt::Display for DeadLetterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterTarget::Kinesis { stream } => write!(f, "kinesis:{stream}"),
            DeadLetterTarget::File(path) => write!(f, "file:{}", path.display()),
            DeadLetterTarget::Callback(_) => f.write_str("callback"),
        }
    }
}

/// Appends JSON lines to a file; one writer at a time.
struct FileDestination {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl DeadLetter for FileDestination {
    fn send(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (path, lock) = (self.path.clone(), self.lock.clone());
        Box::pin(async move {
            let mut text = String::new();
            for e in &entries {
                text.push_str(&e.to_json());
                text.push('\n');
            }
            let _one = lock.lock().await;
            let open = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await;
            let mut file = open.map_err(|e| HandlerError::msg(format!("cannot open {}: {e}", path.display())))?;
            file.write_all(text.as_bytes())
                .await
                .map_err(|e| HandlerError::msg(format!("cannot write {}: {e}", path.display())))?;
            file.sync_data().await.map_err(|e| HandlerError::msg(format!("cannot sync {}: {e}", path.display())))?;
            Ok(())
        })
    }
}

/// PutRecords into a Kinesis stream; the SDK client is made on first use.
struct KinesisDestination {
    stream: String,
    client: Arc<OnceCell<aws_sdk_kinesis::Client>>,
}

impl KinesisDestination {
    fn new(stream: String) -> Self {
        Self { stream, client: Arc::default() }
    }
}

/// PutRecords takes at most 500 records a call.
const PUT_RECORDS_MAX: usize = 500;

impl DeadLetter for KinesisDestination {
    fn send(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (stream, cell) = (self.stream.clone(), self.client.clone());
        Box::pin(async move {
            let client =
                cell.get_or_init(|| async { aws_sdk_kinesis::Client::new(&aws_config::load_from_env().await) }).await;
            for chunk in entries.chunks(PUT_RECORDS_MAX) {
                let mut request = client.put_records();
                request =
                    if stream.starts_with("arn:") { request.stream_arn(&stream) } else { request.stream_name(&stream) };
                for e in chunk {
                    let entry = aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                        .data(aws_sdk_kinesis::primitives::Blob::new(e.to_json().into_bytes()))
                        .partition_key(if e.partition_key.is_empty() { "dead-letter" } else { &e.partition_key })
                        .build()
                        .map_err(|err| HandlerError::msg(format!("dead-letter entry: {err}")))?;
                    request = request.records(entry);
                }
                let out = request.send().await.map_err(|err| {
                    HandlerError::msg(format!(
                        "PutRecords to {stream} failed: {}",
                        aws_sdk_kinesis::error::DisplayErrorContext(&err)
                    ))
                })?;
                // Partial failures: the whole chunk is sent again (a duplicate beats a loss).
                if out.failed_record_count().unwrap_or(0) > 0 {
                    return Err(HandlerError::msg(format!(
                        "PutRecords to {stream}: {} of {} records failed",
                        out.failed_record_count().unwrap_or(0),
                        chunk.len()
                    )));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: &str) -> DeadLetterEntry {
        DeadLetterEntry {
            app: "app".into(),
            stream: "s".into(),
            shard_id: "shard-1".into(),
            sequence_number: seq.into(),
            sub_sequence_number: 0,
            partition_key: "k".into(),
            attempts: 3,
            error: "boom".into(),
            reason: GiveUpReason::HandlerFailed,
            approximate_arrival_timestamp_ms: 1_700_000_000_000,
            data: Bytes::from_static(b"\x00hi"),
        }
    }

    #[test]
    fn targets_parse_from_text() {
        assert_eq!(DeadLetterTarget::parse("kinesis:dlq"), Some(DeadLetterTarget::Kinesis { stream: "dlq".into() }));
        assert_eq!(DeadLetterTarget::parse("file:/tmp/x.jsonl"), Some(DeadLetterTarget::File("/tmp/x.jsonl".into())));
        assert_eq!(DeadLetterTarget::parse("kinesis:"), None);
        assert_eq!(DeadLetterTarget::parse("s3:bucket"), None);
        assert_eq!(DeadLetterTarget::Kinesis { stream: "dlq".into() }.to_string(), "kinesis:dlq");
    }

    #[tokio::test]
    async fn the_file_destination_appends_one_json_line_per_entry() {
        let path = std::env::temp_dir().join(format!("kb-dlq-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let dest = DeadLetterTarget::File(path.clone()).open();
        dest.send(vec![entry("1"), entry("2")]).await.unwrap();
        dest.send(vec![entry("3")]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["sequence_number"], "3");
        assert_eq!(lines[0]["data"], "AGhp");
        assert_eq!(lines[0]["attempts"], 3);
        assert_eq!(lines[0]["reason"], "handler_failed");
        let _ = std::fs::remove_file(&path);
        let unwritable = DeadLetterTarget::File("/nonexistent-dir/x".into()).open();
        assert!(unwritable.send(vec![entry("1")]).await.is_err());
    }
}
