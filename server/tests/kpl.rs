//! KPL aggregation end to end: aggregates built by the reference encoder (PyPI
//! `aws-kinesis-agg`, run by `tests/tools/kpl_aggregate.py`) reach the client as their
//! user records with sub-sequence numbers; a malformed aggregate arrives raw; a
//! checkpoint inside an aggregate resumes at the next user record after a restart, and
//! one on a plain record does not deliver it again.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use aws_sdk_kinesis::primitives::Blob;
use common::*;
use kinesis_butler_proto as pb;

/// The hash key ranges of a 2-shard stream split at 2^127: these keys pick the shard.
const SHARD_KEYS: [&str; 2] = ["1", "170141183460469231731687303715884105729"];

/// A user record as the client must see it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    sequence: String,
    sub: u64,
    partition_key: String,
    data: Vec<u8>,
    /// Part of a KPL aggregate (a checkpoint candidate inside one).
    aggregated: bool,
}

fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KB_PYTHON") {
        return Ok(p.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    bail!(
        "no Python with aws-kinesis-agg: run `python3 -m venv .venv && .venv/bin/pip install aws-kinesis-agg==1.2.3 six` \
         at the repository root, or set KB_PYTHON"
    )
}

/// Aggregates `(partition key, data)` lists with the reference encoder.
fn reference_aggregates(aggregates: &[Vec<(String, String)>]) -> Result<Vec<Vec<u8>>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/kpl_aggregate.py");
    let mut child = Command::new(python()?)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running the KPL encoder")?;
    serde_json::to_writer(child.stdin.take().expect("stdin"), aggregates)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("KPL encoder failed: {} (is aws-kinesis-agg installed in .venv?)", out.status);
    }
    let hex: Vec<String> = serde_json::from_slice(&out.stdout)?;
    Ok(hex
        .iter()
        .map(|h| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect())
        .collect())
}

/// Puts one record on the shard picked by `shard_index` and returns its sequence number.
async fn put(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_index: usize,
    pk: &str,
    data: Vec<u8>,
) -> Result<(String, String)> {
    let out = kinesis
        .put_record()
        .stream_name(stream)
        .partition_key(pk)
        .explicit_hash_key(SHARD_KEYS[shard_index])
        .data(Blob::new(data))
        .send()
        .await?;
    Ok((out.shard_id().to_owned(), out.sequence_number().to_owned()))
}

async fn kpl_round_trip(emulator: Emulator) -> Result<()> {
    let kinesis = kinesis_client(emulator);
    let stream = unique("kpl");
    create_stream(&kinesis, &stream, 2).await?;

    // Aggregates of 1 to 7 user records, plain records in between, one malformed.
    let aggregates: Vec<Vec<(String, String)>> = (0..12)
        .map(|a| (0..1 + a % 7).map(|u| (format!("pk-{a}-{}", u % 3), format!("agg-{a}-user-{u}"))).collect())
        .collect();
    let encoded = reference_aggregates(&aggregates)?;
    let mut want: BTreeMap<String, Vec<Want>> = BTreeMap::new();
    for (a, data) in encoded.into_iter().enumerate() {
        let shard_index = a % 2;
        let (shard, seq) = put(&kinesis, &stream, shard_index, &aggregates[a][0].0, data).await?;
        for (sub, (pk, text)) in aggregates[a].iter().enumerate() {
            want.entry(shard.clone()).or_default().push(Want {
                sequence: seq.clone(),
                sub: sub as u64,
                partition_key: pk.clone(),
                data: text.clone().into_bytes(),
                aggregated: true,
            });
        }
        let plain = format!("plain-{a}").into_bytes();
        let (shard, seq) = put(&kinesis, &stream, shard_index, "plain", plain.clone()).await?;
        want.entry(shard).or_default().push(Want {
            sequence: seq,
            sub: 0,
            partition_key: "plain".into(),
            data: plain,
            aggregated: false,
        });
    }
    // The magic, then bytes that are no aggregate: delivered raw, not dropped.
    let mut malformed = vec![0xF3, 0x89, 0x9A, 0xC2];
    malformed.extend_from_slice(b"not a protobuf and no checksum!!");
    let (shard, seq) = put(&kinesis, &stream, 0, "bad", malformed.clone()).await?;
    want.entry(shard).or_default().push(Want {
        sequence: seq,
        sub: 0,
        partition_key: "bad".into(),
        data: malformed,
        aggregated: false,
    });
    assert_eq!(want.len(), 2, "records on both shards");
    let total: usize = want.values().map(Vec::len).sum();

    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("butler.db").display());
    let mut server = TestServer::start(&store, emulator, &["--lease-ttl", "3s"]).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(total, 60).await?;
    for (shard, wanted) in &want {
        let seen: Vec<Want> = got[shard]
            .iter()
            .map(|r| Want {
                sequence: r.sequence_number.clone(),
                sub: r.sub_sequence_number,
                partition_key: r.partition_key.clone(),
                data: r.data.to_vec(),
                aggregated: false,
            })
            .collect();
        let wanted_plain: Vec<Want> = wanted.iter().map(|w| Want { aggregated: false, ..w.clone() }).collect();
        assert_eq!(seen, wanted_plain, "shard {shard}: user records, in order, with sub-sequence numbers");
    }

    // Shard 0: checkpoint in the middle of an aggregate; shard 1: on a plain record.
    let shards: Vec<String> = want.keys().cloned().collect();
    let mut expected_after: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let wanted = &want[shard];
        let at = if i == 0 {
            wanted.iter().position(|w| {
                w.aggregated && w.sub == 1 && wanted.iter().any(|x| x.sequence == w.sequence && x.sub == 2)
            })
        } else {
            wanted
                .iter()
                .position(|w| !w.aggregated && seq_cmp(&w.sequence, &wanted[wanted.len() / 2].sequence).is_gt())
        }
        .context("a checkpoint candidate")?;
        let cp = &wanted[at];
        let req = pb::CheckpointRequest {
            session_id: session.id.clone(),
            stream: stream.clone(),
            shard_id: shard.clone(),
            lease_epoch: session.epochs[shard],
            sequence_number: cp.sequence.clone(),
            sub_sequence_number: cp.sub,
            ..Default::default()
        };
        within(10, "checkpoint", client.checkpoint(req)).await??;
        expected_after.insert(shard.clone(), wanted[at + 1..].iter().map(|w| (w.sequence.clone(), w.sub)).collect());
    }

    drop(session);
    server.kill();
    let server = TestServer::start(&store, emulator, &["--lease-ttl", "3s"]).await?;
    let mut client = server.client().await?;
    let described = within(
        10,
        "describe",
        client.describe_leases(pb::DescribeLeasesRequest { app: "app".into(), stream: stream.clone() }),
    )
    .await??
    .into_inner();
    let subs: Vec<u64> = described.leases.iter().map(|l| l.sub_sequence_number).collect();
    assert_eq!(subs, vec![1, 0], "sub-sequence checkpoints survived the restart");
    let total: usize = expected_after.values().map(Vec::len).sum();
    let mut session = open_session(&mut client, "app", &stream).await?;
    let got = session.collect(total, 60).await?;
    let got: BTreeMap<String, Vec<(String, u64)>> = got
        .into_iter()
        .map(|(s, rs)| (s, rs.into_iter().map(|r| (r.sequence_number, r.sub_sequence_number)).collect()))
        .collect();
    assert_eq!(got, expected_after, "resumed at the next user record: nothing skipped, nothing repeated");
    Ok(())
}

#[tokio::test]
async fn kinesis_local_kpl_aggregates_and_sub_sequence_resume() -> Result<()> {
    kpl_round_trip(Emulator::KinesisLocal).await
}

#[tokio::test]
async fn kinesalite_kpl_aggregates_and_sub_sequence_resume() -> Result<()> {
    kpl_round_trip(Emulator::Kinesalite).await
}
