//! A benchmark-only Kinesis-compatible HTTP source: `ListShards`, `GetShardIterator` and
//! `GetRecords` (awsJson1.1) over pre-generated records held in memory, so that the
//! reader on the other side is the limit, not the source.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

/// The records of one shard, each pre-serialized as its JSON object.
struct Shard {
    id: String,
    records: Vec<String>,
}

/// The source's data: `shards` × `records_per_shard` records of `record_size` bytes.
pub struct FakeStream {
    name: String,
    shards: Vec<Shard>,
    arrival_secs: f64,
}

impl FakeStream {
    /// Pre-generates every record. Sequence numbers are 56-digit decimals, increasing.
    pub fn new(name: &str, shards: usize, records_per_shard: usize, record_size: usize) -> Self {
        let arrival_secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let shards = (0..shards)
            .map(|s| {
                let records = (0..records_per_shard)
                    .map(|i| {
                        let mut data = format!("shard-{s}-record-{i:010}-").into_bytes();
                        data.resize(record_size.max(data.len()), b'x');
                        let seq = format!("4959{s:04}{i:048}");
                        json!({
                            "SequenceNumber": seq,
                            "ApproximateArrivalTimestamp": arrival_secs,
                            "Data": base64::engine::general_purpose::STANDARD.encode(&data),
                            "PartitionKey": format!("pk-{i}"),
                        })
                        .to_string()
                    })
                    .collect();
                Shard { id: format!("shardId-{s:012}"), records }
            })
            .collect();
        Self { name: name.to_owned(), shards, arrival_secs }
    }

    /// Total records.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.records.len()).sum()
    }

    /// Whether the stream holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: &str) -> Option<(usize, &Shard)> {
        self.shards.iter().enumerate().find(|(_, s)| s.id == id)
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
            let Some((index, shard)) = stream.shard(shard_id) else {
                return error("ResourceNotFoundException", "no such shard");
            };
            let pos = match req["ShardIteratorType"].as_str() {
                Some("LATEST") => shard.records.len(),
                Some("AFTER_SEQUENCE_NUMBER") | Some("AT_SEQUENCE_NUMBER") => {
                    let seq = req["StartingSequenceNumber"].as_str().unwrap_or("");
                    let i: usize = seq.get(8..).and_then(|t| t.parse().ok()).unwrap_or(0);
                    if req["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER" { i + 1 } else { i }
                }
                _ => 0,
            };
            ok(json!({ "ShardIterator": format!("{index}:{pos}") }).to_string())
        }
        "GetRecords" => {
            let it = req["ShardIterator"].as_str().unwrap_or("");
            let limit = req["Limit"].as_u64().unwrap_or(10_000).min(10_000) as usize;
            let Some((index, pos)) = it.split_once(':').and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            else {
                return error("InvalidArgumentException", "bad iterator");
            };
            let Some(shard) = stream.shards.get(index) else {
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
            body.push_str(&format!("],\"NextShardIterator\":\"{index}:{end}\",\"MillisBehindLatest\":{behind}}}"));
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
