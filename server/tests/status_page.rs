//! The live status page and the lag gauges (issue 20).
//!
//! The browser test needs Debian `chromium` and npm `playwright-core` (`scripts/browser.sh`
//! installs both); its screenshot goes to `$KB_ARTIFACTS/status.png` (default
//! `target/artifacts/status.png` of the workspace).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use pb::get_records_response::Event;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-status";

/// `GET path` with an optional bearer token: (status code, body).
async fn http_get(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    within(10, "HTTP response", conn.read_to_string(&mut text)).await??;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((code, body.to_owned()))
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// Opens a session through a client that presents the token.
async fn open_with_token(
    addr: &str,
    app: &str,
    stream: &str,
    name: &str,
) -> Result<(String, tonic::Streaming<pb::GetRecordsResponse>, tonic::transport::Channel)> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?.connect().await?;
    let mut client = ButlerClient::with_interceptor(channel.clone(), |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header"));
        Ok(r)
    });
    let req = pb::GetRecordsRequest {
        app: app.into(),
        streams: vec![stream.into()],
        client_name: name.into(),
        ..Default::default()
    };
    let mut events = client.get_records(req).await?.into_inner();
    match within(30, "SessionStarted", events.message()).await?? {
        Some(pb::GetRecordsResponse { event: Some(Event::SessionStarted(s)) }) => Ok((s.session_id, events, channel)),
        other => bail!("expected SessionStarted, got {other:?}"),
    }
}

/// Keeps reading a raw session's events (it answers no revoke: the handoff grace moves
/// its shards).
fn drain(mut events: tonic::Streaming<pb::GetRecordsResponse>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} })
}

#[tokio::test]
async fn the_page_lists_every_shard_and_follows_a_join_without_a_reload() -> Result<()> {
    let chromium = std::env::var("KB_CHROMIUM").ok().or_else(|| which("chromium"));
    let playwright = std::env::var("KB_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join(".tools/browser/node_modules"));
    let Some(chromium) = chromium.filter(|_| playwright.join("playwright-core").exists()) else {
        bail!("the browser test needs chromium and playwright-core: run scripts/browser.sh");
    };
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("status");
    create_stream(&kinesis, &stream, 4).await?;
    let dir = tempfile::tempdir()?;
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        Emulator::Kinesalite,
        &["--http-listen", &http, "--auth-token", TOKEN, "--handoff-grace", "500ms"],
    )
    .await?;

    let (a, events_a, _channel_a) = open_with_token(&server.addr, "app", &stream, "first").await?;
    let _a = drain(events_a);
    assert_eq!(http_get(http_port, "/status.json", None).await?.0, 401, "the JSON needs the token");
    assert_eq!(http_get(http_port, "/status.json", Some("wrong")).await?.0, 401);
    let (code, page) = http_get(http_port, "/", None).await?;
    let fetches_elsewhere =
        ["src=\"http", "href=\"http", "@import", "url(http", "fetch(\"http"].iter().any(|p| page.contains(p));
    assert!(code == 200 && page.contains("status.json") && !fetches_elsewhere, "self-contained page");

    let artifacts =
        std::env::var("KB_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target/artifacts"));
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("status.png");
    let _ = std::fs::remove_file(&shot);
    let mut node = tokio::process::Command::new("node")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.mjs"))
        .args([&format!("http://{http}/#token={TOKEN}"), &a, &shot.display().to_string()])
        .env("KB_CHROMIUM", &chromium)
        .env("KB_PLAYWRIGHT_DIR", &playwright)
        .env("KB_SHARDS", "4")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning node")?;
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("stdout")).lines();
    let first = within(60, "the page to list every shard owned by the first session", lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("ready"), "{first:?}");

    // A second session joins and takes half; the page follows without a reload.
    let (b, events_b, _channel_b) = open_with_token(&server.addr, "app", &stream, "second").await?;
    let _b = drain(events_b);
    let done = within(90, "the page to show the split", lines.next_line()).await??.unwrap_or_default();
    let status = within(30, "node to exit", node.wait()).await??;
    assert!(status.success() && done.starts_with("ok"), "{done:?} {status}");
    let owners: Vec<String> = serde_json::from_str(done.trim_start_matches("ok").trim())?;
    assert_eq!(owners.iter().filter(|o| **o == a).count(), 2, "{owners:?}");
    assert_eq!(owners.iter().filter(|o| **o == b).count(), 2, "{owners:?}");
    assert!(shot.exists(), "screenshot at {}", shot.display());

    let (code, json) = http_get(http_port, "/status.json", Some(TOKEN)).await?;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let group =
        v["groups"].as_array().unwrap().iter().find(|g| g["stream"] == stream.as_str()).expect("the stream").clone();
    assert_eq!(group["shards"].as_array().unwrap().len(), 4);
    assert_eq!(group["sessions"].as_array().unwrap().len(), 2);
    assert!(group["moves"].as_array().unwrap().iter().any(|m| m["kind"] == "handoff"), "{group}");
    Ok(())
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

fn gauge(text: &str, name: &str, stream: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("stream=\"{stream}\"")))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test]
async fn lag_gauges_rise_while_the_handler_is_slow_and_fall_when_it_catches_up() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("lag");
    create_stream(&kinesis, &stream, 1).await?;
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port();
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("l.db").display()),
        Emulator::KinesisLocal,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--session-buffer", "2"],
    )
    .await?;
    let mut client = server.client().await?;
    let req = pb::GetRecordsRequest {
        app: "lag".into(),
        streams: vec![stream.clone()],
        max_records_per_batch: 5,
        ..Default::default()
    };
    let mut events = client.get_records(req).await?.into_inner();
    let metrics = |name: &'static str| {
        let stream = stream.clone();
        async move {
            let (_, text) = http_get(metrics_port, "/metrics", None).await?;
            Ok::<_, anyhow::Error>(gauge(&text, name, &stream))
        }
    };

    // A producer keeps putting 100 records/s; the handler takes one batch of 5 every
    // 200 ms (25/s), so it falls further behind the tip every second.
    let producer = common::driver::Producer::start(kinesis.clone(), &stream, 10, Duration::from_millis(100), 800);
    let mut received = 0;
    let mut samples = Vec::new();
    within(60, "the lag gauges to rise while the handler is slow", async {
        loop {
            if let Some(Event::Records(b)) = events.message().await?.and_then(|m| m.event) {
                received += b.records.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let max = metrics("kinesis_butler_lag_max_millis").await?.unwrap_or(0.0);
            let sum = metrics("kinesis_butler_lag_sum_millis").await?.unwrap_or(0.0);
            samples.push(max);
            if max >= 2000.0 && sum >= max {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await??;
    let peak = samples.iter().cloned().fold(0.0, f64::max);
    assert!(samples.first().is_some_and(|f| *f < peak), "rising: {samples:?}");
    let total: usize = producer.finish().await?.values().map(Vec::len).sum();
    assert!(received < total, "still behind: {received} of {total}");

    // The handler catches up: it reads everything at full speed; the gauges fall to 0.
    within(60, "the lag gauges to fall when the handler caught up", async {
        loop {
            tokio::select! {
                m = events.message() => { if let Some(Event::Records(b)) = m?.and_then(|m| m.event) { received += b.records.len(); } }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let max = metrics("kinesis_butler_lag_max_millis").await?.unwrap_or(f64::MAX);
                    if received >= total && max == 0.0 && metrics("kinesis_butler_lag_sum_millis").await? == Some(0.0) {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
            }
        }
    })
    .await??;
    assert!(peak >= 2000.0);
    Ok(())
}

#[tokio::test]
async fn any_instance_shows_the_whole_app_with_the_figures_of_the_others() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("status-two");
    create_stream(&kinesis, &stream, 2).await?;
    put_records(&kinesis, &stream, 0, 50).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("two.db").display());
    let http_port = free_port();
    let http = format!("127.0.0.1:{http_port}");
    let fast = ["--status-interval", "300ms"];
    let page_server =
        TestServer::start(&store, Emulator::Kinesalite, &[&["--http-listen", http.as_str()], &fast[..]].concat())
            .await?;
    let other = TestServer::start(&store, Emulator::Kinesalite, &fast).await?;

    // The first session is on the instance without a page; a second one on the page's.
    let mut far_client = other.client().await?;
    let mut far = open_session(&mut far_client, "app", &stream).await?;
    far.collect(50, 60).await?;
    let _far = drain(far.events);
    let mut near_client = page_server.client().await?;
    let near = open_session(&mut near_client, "app", &stream).await?;
    let _near = drain(near.events);

    let mut last = serde_json::Value::Null;
    let seen = within(60, "the page's instance to show both instances' sessions and figures", async {
        loop {
            let (_, json) = http_get(http_port, "/status.json", None).await?;
            let v: serde_json::Value = serde_json::from_str(&json)?;
            if let Some(g) = v["groups"].as_array().and_then(|gs| gs.iter().find(|g| g["stream"] == stream.as_str())) {
                let shards = g["shards"].as_array().cloned().unwrap_or_default();
                let owners: std::collections::BTreeSet<String> =
                    shards.iter().filter_map(|s| s["owner"].as_str().map(str::to_owned)).collect();
                let instances: std::collections::BTreeSet<String> =
                    shards.iter().filter_map(|s| s["instance"].as_str().map(str::to_owned)).collect();
                let figures = shards.iter().all(|s| s["lag_ms"].is_i64() && s["records_per_second"].is_f64());
                if owners == [far.id.clone(), near.id.clone()].into() && instances.len() == 2 && figures {
                    return Ok::<_, anyhow::Error>(v);
                }
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let v = seen.with_context(|| format!("last status: {last}"))??;
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(2), "{v}");
    Ok(())
}
