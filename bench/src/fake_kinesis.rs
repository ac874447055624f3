//! A benchmark-only Kinesis-compatible HTTP source: `ListShards`, `GetShardIterator` and
//! `GetRecords` (awsJson1.1) over the server's own in-memory source model
//! ([`MemorySource`], the one the server's `--memory-source` and its unit tests use), with
//! every record serialized once up front, so that the reader on the other side is the
//! limit, not the source.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kinesis_butler::retrieval::kinesis::IteratorStart;
use kinesis_butler::retrieval::memory::MemorySource;
use kinesis_butler::retrieval::source::ShardSource;
use serde_json::{json, Value};

/// The records of one shard, each pre-serialized as its JSON object.
struct Shard {
    id: String,
    records: Vec<String>,
}

/// The source's data: `shards` × `records_per_shard` records of `record_size` bytes.
pub struct FakeStream {
    name: String,
    model: Arc<MemorySource>,
    shards: Vec<Shard>,
    arrival_secs: f64,
}

impl FakeStream {
    /// Generates the stream in a [`MemorySource`] and serializes every record once.
    pub async fn new(name: &str, shards: usize, records_per_shard: usize, record_size: usize) -> anyhow::Result<Self> {
        let model = MemorySource::new();
        model.create_generated(name, shards, records_per_shard, record_size);
        let mut arrival_secs = 0.0;
        let mut out = Vec::new();
        for shard in model.list_shards(name).await? {
            let mut records = Vec::with_capacity(records_per_shard);
            let mut it = model.shard_iterator(name, &shard.shard_id, &IteratorStart::TrimHorizon).await?;
            loop {
                let page = model.get_records(&it, 10_000).await?;
                if page.records.is_empty() {
                    break;
                }
                for r in &page.records {
                    let at = r.approximate_arrival_timestamp().map_or(0.0, |t| t.as_secs_f64());
                    arrival_secs = at;
                    records.push(
                        json!({
                            "SequenceNumber": r.sequence_number(),
                            "ApproximateArrivalTimestamp": at,
                            "Data": base64::engine::general_purpose::STANDARD.encode(r.data().as_ref()),
                            "PartitionKey": r.partition_key(),
                        })
                        .to_string(),
                    );
                }
                match page.next_iterator {
                    Some(next) => it = next,
                    None => break,
                }
            }
            out.push(Shard { id: shard.shard_id, records });
        }
        Ok(Self { name: name.to_owned(), model, shards: out, arrival_secs })
    }

    /// Total records.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.records.len()).sum()
    }

    /// Whether the stream holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.id == id)
    }
}

fn error(kind: &str, message: &str) -> Response {
    let body = json!({"__type": kind, "message": message}).to_string();
    (StatusCode::BAD_REQUEST, [("content-type", "application/x-amz-json-1.1")], body).into_response()
}

fn ok(body: String) -> Response {
    (StatusCode::OK, [("content-type", "application/x-amz-json-1.1")], body).into_response()
}

async fn handle(State(stream): State<Arc<FakeStream>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let op = target.rsplit('.').next().unwrap_or("");
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error("SerializationException", "bad JSON");
    };
    match op {
        "ListShards" => {
            let shards: Vec<Value> = stream
                .shards
                .iter()
                .map(|s| {
                    json!({
                        "ShardId": s.id,
                        "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
                        "SequenceNumberRange": {"StartingSequenceNumber": "0"},
                    })
                })
                .collect();
            ok(json!({ "Shards": shards }).to_string())
        }
        "DescribeStreamSummary" => ok(json!({"StreamDescriptionSummary": {
            "StreamName": stream.name, "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{}", stream.name),
            "StreamStatus": "ACTIVE", "RetentionPeriodHours": 24, "StreamCreationTimestamp": stream.arrival_secs,
            "OpenShardCount": stream.shards.len(), "EnhancedMonitoring": [], "EncryptionType": "NONE"}})
        .to_string()),
        "GetShardIterator" => {
            let shard_id = req["ShardId"].as_str().unwrap_or("");
            let sequence = || req["StartingSequenceNumber"].as_str().unwrap_or("").to_owned();
            let start = match req["ShardIteratorType"].as_str() {
                Some("LATEST") => IteratorStart::Latest,
                Some("AFTER_SEQUENCE_NUMBER") => IteratorStart::AfterSequence(sequence()),
                Some("AT_SEQUENCE_NUMBER") => IteratorStart::AtSequence(sequence()),
                _ => IteratorStart::TrimHorizon,
            };
            match stream.model.shard_iterator(&stream.name, shard_id, &start).await {
                Ok(it) => ok(json!({ "ShardIterator": it }).to_string()),
                Err(e) => error("ResourceNotFoundException", &e.to_string()),
            }
        }
        "GetRecords" => {
            let it = req["ShardIterator"].as_str().unwrap_or("");
            let limit = req["Limit"].as_u64().unwrap_or(10_000).min(10_000) as usize;
            let Some((_, shard_id, pos)) = MemorySource::iterator_position(it) else {
                return error("InvalidArgumentException", "bad iterator");
            };
            let Some(shard) = stream.shard(shard_id) else {
                return error("InvalidArgumentException", "bad iterator");
            };
            let end = (pos + limit).min(shard.records.len());
            let page = &shard.records[pos.min(end)..end];
            let mut body = String::with_capacity(page.iter().map(|r| r.len() + 1).sum::<usize>() + 128);
            body.push_str("{\"Records\":[");
            for (i, r) in page.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(r);
            }
            let behind = if end < shard.records.len() { 1000 } else { 0 };
            body.push_str(&format!(
                "],\"NextShardIterator\":\"{}/{shard_id}/{end}\",\"MillisBehindLatest\":{behind}}}",
                stream.name
            ));
            ok(body)
        }
        _ => error("UnknownOperationException", &format!("unsupported operation {target:?}")),
    }
}

/// Serves `stream` on `addr` until the task is dropped; returns the bound address.
pub async fn serve(
    stream: Arc<FakeStream>,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().fallback(handle).with_state(stream);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, task))
}
