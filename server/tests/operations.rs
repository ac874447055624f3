//! Operating the server: graceful shutdown and Prometheus metrics.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use common::*;
use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    match body.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200") => Ok(body.to_owned()),
        _ => bail!("bad HTTP response: {body:.200}"),
    }
}

/// Parses Prometheus text format strictly enough to catch a malformed page.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            bail!("bad metric name in {line}");
        }
        if name_end < series.len() && !series.ends_with('}') {
            bail!("unterminated labels in {line}");
        }
        samples.insert(series.to_owned(), value.parse::<f64>()?);
    }
    Ok(samples)
}

fn sum(samples: &BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.starts_with(name) && k.contains(label)).map(|(_, v)| v).sum()
}

#[tokio::test]
async fn metrics_page_counts_delivered_records() -> Result<()> {
    let emulator = Emulator::Kinesalite;
    let kinesis = kinesis_client(emulator);
    let stream = unique("metrics");
    create_stream(&kinesis, &stream, 3).await?;
    put_records(&kinesis, &stream, 0, 300).await?;
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("m.db").display()),
        emulator,
        &["--metrics-listen", &metrics_addr],
    )
    .await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    session.collect(300, 60).await?;

    let label = format!("stream=\"{stream}\"");
    let samples = parse_prometheus(&http_get(metrics_port, "/metrics").await?)?;
    assert_eq!(sum(&samples, "kinesis_butler_records_delivered_total", &label), 300.0);
    assert_eq!(sum(&samples, "kinesis_butler_bytes_delivered_total", &label), sum_bytes(300));
    assert!(sum(&samples, "kinesis_butler_get_records_calls_total", &label) >= 3.0);
    assert_eq!(sum(&samples, "kinesis_butler_leases_held", &label), 3.0);
    assert_eq!(samples.get("kinesis_butler_sessions"), Some(&1.0));
    Ok(())
}

/// Bytes of the payloads `rec-0` … `rec-{n-1}`.
fn sum_bytes(n: usize) -> f64 {
    (0..n).map(|i| format!("rec-{i}").len()).sum::<usize>() as f64
}

#[tokio::test]
async fn sigterm_revokes_waits_for_final_checkpoints_and_releases() -> Result<()> {
    let emulator = Emulator::Kinesalite;
    let kinesis = kinesis_client(emulator);
    let stream = unique("sigterm");
    create_stream(&kinesis, &stream, 3).await?;
    let put = put_records(&kinesis, &stream, 0, 90).await?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut server = TestServer::start(&store, emulator, &["--shutdown-grace", "20s"]).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(90, 60).await?;
    assert_eq!(got.len(), 3);

    let status = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status()?;
    assert!(status.success());

    // Every shard is revoked with SHUTDOWN; answer each with a final checkpoint + release.
    let mut revoked = 0;
    within(30, "SHUTDOWN revokes and end of stream", async {
        while let Some(msg) = session.events.message().await? {
            if let Some(Event::ShardRevoked(r)) = msg.event {
                assert_eq!(r.reason, Reason::Shutdown as i32);
                let last = put[&r.shard_id].last().expect("records").sequence_number.clone();
                let req = pb::CheckpointRequest {
                    session_id: session.id.clone(),
                    stream: stream.clone(),
                    shard_id: r.shard_id.clone(),
                    lease_epoch: r.lease_epoch,
                    sequence_number: last,
                    release: true,
                    ..Default::default()
                };
                client.checkpoint(req).await?;
                revoked += 1;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    assert_eq!(revoked, 3, "every shard revoked once");
    let exit = within(30, "server exit", async {
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Ok::<_, anyhow::Error>(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert!(exit.success(), "exit 0 after SIGTERM, got {exit}");

    // Final checkpoints stored, every lease free.
    let server = TestServer::start(&store, emulator, &[]).await?;
    let mut client = server.client().await?;
    let req = pb::DescribeLeasesRequest { app: "app".into(), stream: stream.clone() };
    let leases = client.describe_leases(req).await?.into_inner().leases;
    assert_eq!(leases.len(), 3);
    for lease in leases {
        assert_eq!(lease.owner, "", "lease of {} released", lease.shard_id);
        assert_eq!(lease.checkpoint, put[&lease.shard_id].last().unwrap().sequence_number);
    }
    Ok(())
}
