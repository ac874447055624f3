//! A fault-injecting HTTP reverse proxy for Kinesis (awsJson1.1 over HTTP/1.1), put
//! between the server and an emulator. Neither emulator throttles; through this proxy
//! GetRecords calls can be throttled (`ProvisionedThroughputExceededException`), fail
//! with a 500, lose their connection or be delayed, GetShardIterator calls can hit
//! `LimitExceededException`, and shards can be hidden as if trimmed past the retention
//! period (left out of ListShards, `ResourceNotFoundException` on GetShardIterator).
//! Faults are picked by counting calls, so a run is reproducible; every call is counted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{free_port, TestServer};

/// Which calls fail, as "one in n" of each operation's calls (0: never). When several
/// pick the same call the first listed wins.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// GetRecords answered 400 `ProvisionedThroughputExceededException`.
    pub throttle_one_in: u64,
    /// GetRecords answered 500 `InternalFailure`.
    pub fail_one_in: u64,
    /// GetRecords whose connection is closed without an answer.
    pub drop_one_in: u64,
    /// GetRecords forwarded after `delay`.
    pub delay_one_in: u64,
    /// How long a delayed call waits.
    pub delay: Duration,
    /// GetShardIterator answered 400 `LimitExceededException`.
    pub limit_one_in: u64,
    /// Shards that no longer exist, as if past the retention period.
    pub hidden_shards: BTreeSet<String>,
}

/// What went through the proxy.
#[derive(Debug, Default)]
pub struct Counts {
    /// GetRecords calls received (attempts, including the SDK's own retries).
    pub get_records: AtomicU64,
    /// GetRecords calls answered by the emulator with 200.
    pub get_records_ok: AtomicU64,
    /// GetRecords calls throttled.
    pub throttled: AtomicU64,
    /// GetRecords calls answered 500.
    pub failed: AtomicU64,
    /// GetRecords connections dropped.
    pub dropped: AtomicU64,
    /// GetRecords calls delayed.
    pub delayed: AtomicU64,
    /// GetShardIterator calls received.
    pub shard_iterator: AtomicU64,
    /// GetShardIterator calls answered `LimitExceededException`.
    pub limited: AtomicU64,
    /// GetShardIterator calls answered `ResourceNotFoundException` for a hidden shard.
    pub hidden: AtomicU64,
}

impl Counts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Mutex<Faults>,
    counts: Counts,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_KINESIS`.
    pub endpoint: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Fault {
    Throttle,
    Fail,
    Drop,
    Delay(Duration),
    Limit,
    Hidden,
}

fn picks(one_in: u64, n: u64) -> bool {
    one_in > 0 && n.is_multiple_of(one_in)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-ErrorType", kind)
        .header("x-amzn-RequestId", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:4620`).
    pub async fn start(upstream: &str, faults: Faults) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            faults: Mutex::new(faults),
            counts: Counts::default(),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    // A dropped connection ends here with an error: that is the fault.
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Ok(Self { endpoint, state, task })
    }

    /// What went through so far.
    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }
}

impl State {
    fn pick(&self, target: &str, body: &[u8]) -> Option<Fault> {
        let faults = self.faults.lock().unwrap().clone();
        let c = &self.counts;
        match target {
            "GetRecords" => {
                let n = c.get_records.fetch_add(1, Ordering::SeqCst) + 1;
                if picks(faults.throttle_one_in, n) {
                    c.throttled.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Throttle)
                } else if picks(faults.fail_one_in, n) {
                    c.failed.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Fail)
                } else if picks(faults.drop_one_in, n) {
                    c.dropped.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Drop)
                } else if picks(faults.delay_one_in, n) {
                    c.delayed.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Delay(faults.delay))
                } else {
                    None
                }
            }
            "GetShardIterator" => {
                let n = c.shard_iterator.fetch_add(1, Ordering::SeqCst) + 1;
                let shard = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("ShardId").and_then(|s| s.as_str()).map(str::to_owned));
                if shard.is_some_and(|s| faults.hidden_shards.contains(&s)) {
                    c.hidden.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Hidden)
                } else if picks(faults.limit_one_in, n) {
                    c.limited.fetch_add(1, Ordering::SeqCst);
                    Some(Fault::Limit)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("")
            .to_owned();
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
        match self.pick(&target, &body) {
            Some(Fault::Throttle) => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "ProvisionedThroughputExceededException",
                    "Rate exceeded for shard",
                ))
            }
            Some(Fault::Fail) => {
                return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "injected failure"))
            }
            Some(Fault::Drop) => return Err(std::io::Error::other("injected connection drop")),
            Some(Fault::Limit) => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "LimitExceededException",
                    "Rate exceeded for GetShardIterator",
                ))
            }
            Some(Fault::Hidden) => {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "ResourceNotFoundException",
                    "Shard does not exist (trimmed)",
                ))
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }

        let uri = format!("{}{}", self.upstream, parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let mut forward = Request::builder().method(parts.method).uri(uri);
        for (name, value) in &parts.headers {
            if name != "host" {
                forward = forward.header(name, value);
            }
        }
        let forward = forward.body(Full::new(body)).map_err(std::io::Error::other)?;
        let answer = self.client.request(forward).await.map_err(std::io::Error::other)?;
        let (mut parts, body) = answer.into_parts();
        let mut body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
        if target == "GetRecords" && parts.status == StatusCode::OK {
            self.counts.get_records_ok.fetch_add(1, Ordering::SeqCst);
        }
        let hidden = self.faults.lock().unwrap().hidden_shards.clone();
        if target == "ListShards" && parts.status == StatusCode::OK && !hidden.is_empty() {
            let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
            if let Some(shards) = v.get_mut("Shards").and_then(|s| s.as_array_mut()) {
                shards.retain(|s| !s.get("ShardId").and_then(|id| id.as_str()).is_some_and(|id| hidden.contains(id)));
            }
            body = Bytes::from(serde_json::to_vec(&v).map_err(std::io::Error::other)?);
            parts.headers.remove("content-length");
        }
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

/// Starts a `kinesis-butler` whose Kinesis endpoint is `endpoint` (e.g. a proxy).
pub async fn start_server_via(endpoint: &str, store: &str, extra: &[&str]) -> Result<TestServer> {
    TestServer::spawn(free_port(), store, endpoint, extra, None).await
}
