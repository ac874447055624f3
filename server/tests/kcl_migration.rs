//! `kinesis-butler kcl import|export` against dynalite and kinesalite: a KCL lease table
//! seeded with items exactly as KCL 3.x writes them, naming records of real streams; after
//! the import a Butler session gets exactly the records after each checkpoint (children
//! after their finished parent); the export writes an equal table back; bad tables and
//! items are refused with nothing written.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::primitives::Blob;
use common::*;
use kinesis_butler_proto as pb;
use pb::get_records_response::Event;

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ss(v: &[&str]) -> AttributeValue {
    AttributeValue::Ss(v.iter().map(|x| x.to_string()).collect())
}

/// The AWS settings this process needs to open a store on dynalite itself (set once,
/// before any client reads them).
fn test_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ENDPOINT_URL_DYNAMODB", dynalite_endpoint());
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    });
}

/// Runs `kinesis-butler kcl ARGS…` against the emulators; returns (success, stdout+stderr).
fn kcl(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_kinesis-butler"))
        .arg("kcl")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KINESIS", Emulator::Kinesalite.endpoint())
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynalite_endpoint())
        .env("RUST_LOG", "warn")
        .output()
        .context("running kinesis-butler kcl")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A KPL aggregate of `records` (partition key, data): magic, protobuf, MD5.
fn kpl_aggregate(records: &[(&str, &str)]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut body = Vec::new();
    for (pk, _) in records {
        bytes_field(&mut body, 1, pk.as_bytes()); // partition_key_table
    }
    for (i, (_, data)) in records.iter().enumerate() {
        let mut record = Vec::new();
        varint(&mut record, 1 << 3); // partition_key_index
        varint(&mut record, i as u64);
        bytes_field(&mut record, 3, data.as_bytes()); // data
        bytes_field(&mut body, 3, &record); // records
    }
    use md5::Digest;
    let mut out = vec![0xF3, 0x89, 0x9A, 0xC2];
    out.extend_from_slice(&body);
    out.extend_from_slice(md5::Md5::digest(&body).as_slice());
    out
}

struct Shard {
    id: String,
    start_key: String,
    end_key: String,
}

async fn shards(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<Vec<Shard>> {
    let out = kinesis.list_shards().stream_name(stream).send().await?;
    Ok(out
        .shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().expect("hash range");
            Shard {
                id: s.shard_id().into(),
                start_key: r.starting_hash_key().into(),
                end_key: r.ending_hash_key().into(),
            }
        })
        .collect())
}

/// Puts one record at `hash_key`; returns (shard, sequence number).
async fn put(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    hash_key: &str,
    data: Vec<u8>,
) -> Result<(String, String)> {
    let out = kinesis
        .put_record()
        .stream_name(stream)
        .partition_key("pk")
        .explicit_hash_key(hash_key)
        .data(Blob::new(data))
        .send()
        .await?;
    Ok((out.shard_id().to_owned(), out.sequence_number().to_owned()))
}

/// A user record as a session delivers it.
type Delivered = (String, u64, Vec<u8>);

/// The fixture: streams with records, and a KCL table naming them.
struct Fixture {
    stream: String,
    multi_stream: String,
    /// shard → what a session must get after the import (besides LATEST's shard).
    want: BTreeMap<String, Vec<Delivered>>,
    /// The LATEST shard and its start hash key.
    latest: (String, String),
    /// The KCL lease items (without the row that is not a lease).
    leases: Vec<Item>,
}

async fn seed(kinesis: &aws_sdk_kinesis::Client, dynamo: &aws_sdk_dynamodb::Client, table: &str) -> Result<Fixture> {
    let stream = unique("kcl");
    create_stream(kinesis, &stream, 4).await?;
    let layout = shards(kinesis, &stream).await?;
    let mut want: BTreeMap<String, Vec<Delivered>> = BTreeMap::new();
    let d = |t: String| t.into_bytes();

    // Shard 0: a decimal checkpoint at the 4th of 8 records.
    let mut seqs = Vec::new();
    for i in 0..8 {
        seqs.push(put(kinesis, &stream, &layout[0].start_key, d(format!("s0-{i}"))).await?.1);
    }
    let s0_checkpoint = seqs[3].clone();
    want.insert(layout[0].id.clone(), (4..8).map(|i| (seqs[i].clone(), 0, d(format!("s0-{i}")))).collect());

    // Shard 1: plain records, a KPL aggregate of 4 user records checkpointed at its
    // second (sub-sequence 1), more plain records.
    let mut w1 = Vec::new();
    for i in 0..2 {
        put(kinesis, &stream, &layout[1].start_key, d(format!("s1-{i}"))).await?;
    }
    let users = [("a", "agg-0"), ("b", "agg-1"), ("c", "agg-2"), ("d", "agg-3")];
    let agg = put(kinesis, &stream, &layout[1].start_key, kpl_aggregate(&users)).await?.1;
    for (sub, (_, data)) in users.iter().enumerate().skip(2) {
        w1.push((agg.clone(), sub as u64, d(data.to_string())));
    }
    for i in 2..4 {
        let seq = put(kinesis, &stream, &layout[1].start_key, d(format!("s1-{i}"))).await?.1;
        w1.push((seq, 0, d(format!("s1-{i}"))));
    }
    want.insert(layout[1].id.clone(), w1);

    // Shard 2: LATEST; what is in it now is never delivered.
    for i in 0..3 {
        put(kinesis, &stream, &layout[2].start_key, d(format!("s2-old-{i}"))).await?;
    }

    // Shard 3: records, then split into two children with records of their own.
    for i in 0..3 {
        put(kinesis, &stream, &layout[3].start_key, d(format!("s3-{i}"))).await?;
    }
    let mid = {
        // Halfway through shard 3's range, as a decimal.
        let (a, b): (u128, u128) = (layout[3].start_key.parse()?, layout[3].end_key.parse()?);
        (a + (b - a) / 2).to_string()
    };
    kinesis.split_shard().stream_name(&stream).shard_to_split(&layout[3].id).new_starting_hash_key(&mid).send().await?;
    wait_active(kinesis, &stream).await?;
    let after = shards(kinesis, &stream).await?;
    let children: Vec<&Shard> = after.iter().filter(|s| !layout.iter().any(|o| o.id == s.id)).collect();
    assert_eq!(children.len(), 2, "the split made two children");
    for child in &children {
        let mut w = Vec::new();
        for i in 0..3 {
            let data = format!("{}-{i}", child.id);
            let (shard, seq) = put(kinesis, &stream, &child.start_key, d(data.clone())).await?;
            assert_eq!(shard, child.id);
            w.push((seq, 0, d(data)));
        }
        want.insert(child.id.clone(), w);
    }

    // A second stream, read by the same KCL app in multi-stream mode.
    let multi_stream = unique("kclm");
    create_stream(kinesis, &multi_stream, 1).await?;
    let mut mseqs = Vec::new();
    for i in 0..5 {
        mseqs.push(put(kinesis, &multi_stream, "1", d(format!("m-{i}"))).await?);
    }
    let multi_shard = mseqs[0].0.clone();

    // The KCL table, items as DynamoDBLeaseSerializer writes them.
    create_kcl_like_table(dynamo, table).await?;
    let hash = |shard: &Shard, item: &mut Item| {
        item.insert("startingHashKey".into(), s(&shard.start_key));
        item.insert("endingHashKey".into(), s(&shard.end_key));
    };
    let lease = |key: &str, checkpoint: &str, sub: u64, counter: u64| -> Item {
        [
            ("leaseKey", s(key)),
            ("leaseOwner", s("kcl-worker-1")),
            ("leaseCounter", n(counter)),
            ("checkpoint", s(checkpoint)),
            ("checkpointSubSequenceNumber", n(sub)),
            ("ownerSwitchesSinceCheckpoint", n(0)),
            ("checkpointOwner", s("kcl-worker-1")),
            ("throughputKBps", AttributeValue::N("1.25".into())),
            ("entityType", s("LEASE")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let mut leases = Vec::new();
    let mut i0 = lease(&layout[0].id, &s0_checkpoint, 0, 17);
    hash(&layout[0], &mut i0);
    leases.push(i0);
    let mut i1 = lease(&layout[1].id, &agg, 1, 9);
    i1.insert("pendingCheckpoint".into(), s(&agg));
    i1.insert("pendingCheckpointSubSequenceNumber".into(), n(3));
    hash(&layout[1], &mut i1);
    leases.push(i1);
    let mut i2 = lease(&layout[2].id, "LATEST", 0, 3);
    hash(&layout[2], &mut i2);
    leases.push(i2);
    let mut i3 = lease(&layout[3].id, "SHARD_END", 0, 30);
    i3.remove("leaseOwner");
    let kids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
    i3.insert("childShardIds".into(), ss(&kids));
    hash(&layout[3], &mut i3);
    leases.push(i3);
    for child in &children {
        let mut c = lease(&child.id, "TRIM_HORIZON", 0, 0);
        c.remove("leaseOwner");
        c.insert("parentShardId".into(), ss(&[&layout[3].id]));
        hash(child, &mut c);
        leases.push(c);
    }
    let id = format!("123456789012:{multi_stream}:1700000000");
    let mut m = lease(&format!("{id}:{multi_shard}"), &mseqs[1].1, 0, 5);
    m.insert("streamName".into(), s(&id));
    m.insert("shardId".into(), s(&multi_shard));
    m.insert("startingHashKey".into(), s("0"));
    m.insert("endingHashKey".into(), s("340282366920938463463374607431768211455"));
    leases.push(m);
    for item in &leases {
        dynamo.put_item().table_name(table).set_item(Some(item.clone())).send().await?;
    }
    // KCL 3.5+ keeps other entities in the table too: not a lease.
    let other: Item = [("leaseKey", s("worker-kcl-worker-1")), ("entityType", s("WORKER_METRICS")), ("cpu", n(7))]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    dynamo.put_item().table_name(table).set_item(Some(other)).send().await?;
    want.insert(
        format!("{multi_stream}/{multi_shard}"),
        mseqs[2..].iter().enumerate().map(|(i, (_, seq))| (seq.clone(), 0, d(format!("m-{}", i + 2)))).collect(),
    );
    Ok(Fixture { stream, multi_stream, want, latest: (layout[2].id.clone(), layout[2].start_key.clone()), leases })
}

/// What KCL needs to resume from a lease item: the attributes export keeps.
fn kept(item: &Item) -> BTreeMap<String, String> {
    let keep = [
        "leaseKey",
        "checkpoint",
        "checkpointSubSequenceNumber",
        "parentShardId",
        "childShardIds",
        "startingHashKey",
        "endingHashKey",
        "streamName",
        "shardId",
    ];
    item.iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| {
            let text = match v {
                AttributeValue::Ss(list) => {
                    let mut l = list.clone();
                    l.sort();
                    l.join(",")
                }
                AttributeValue::S(t) | AttributeValue::N(t) => t.clone(),
                other => format!("{other:?}"),
            };
            (k.clone(), text)
        })
        .collect()
}

async fn scan(dynamo: &aws_sdk_dynamodb::Client, table: &str) -> Result<Vec<Item>> {
    Ok(dynamo.scan().table_name(table).consistent_read(true).send().await?.items().to_vec())
}

/// Opens a session on `stream` starting at LATEST.
async fn open_latest(
    client: &mut pb::butler_client::ButlerClient<tonic::transport::Channel>,
    stream: &str,
) -> Result<RawSession> {
    let req = pb::GetRecordsRequest {
        app: "app".into(),
        streams: vec![stream.into()],
        client_name: "kcl-test".into(),
        start: Some(pb::StartPosition { kind: pb::start_position::Kind::Latest as i32, timestamp_ms: 0 }),
        ..Default::default()
    };
    let mut events = within(30, "GetRecords", client.get_records(req)).await??.into_inner();
    match within(30, "SessionStarted", events.message()).await?? {
        Some(pb::GetRecordsResponse { event: Some(Event::SessionStarted(s)) }) => {
            Ok(RawSession { id: s.session_id, events, epochs: BTreeMap::new() })
        }
        other => bail!("expected SessionStarted, got {other:?}"),
    }
}

#[tokio::test]
async fn kcl_import_resumes_each_shard_after_its_checkpoint_and_export_round_trips() -> Result<()> {
    test_env();
    let store = TestStore::dynamodb();
    let kcl_table = unique("kcl-app");
    let back_table = unique("kcl-back");
    let dynamo = dynamodb_client().await;
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let outcome = store
        .run(async {
            let fx = seed(&kinesis, &dynamo, &kcl_table).await?;
            let url = store.url();
            let common = |stream: &str, table: &str| -> Vec<String> {
                ["--kcl-table", table, "--app", "app", "--stream", stream, "--store", &url, "--failover-time", "300ms"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            };
            for stream in [&fx.stream, &fx.multi_stream] {
                let mut a = vec!["import".to_owned()];
                a.extend(common(stream, &kcl_table));
                let (ok, out) = kcl(&strs(&a))?;
                assert!(ok, "import of {stream}: {out}");
                eprintln!("{out}");
                if stream == &fx.stream {
                    assert!(out.contains("LATEST: no checkpoint") && out.contains("open sessions with start LATEST"), "{out}");
                    assert!(out.contains("pendingCheckpoint ignored"), "{out}");
                } else {
                    assert!(out.contains(&format!("123456789012:{}:1700000000", fx.multi_stream)), "{out}");
                }
            }

            // The way back, into a fresh table: equal to the KCL table in what KCL resumes from.
            let mut a = vec!["export".to_owned(), "--initial-position".into(), "latest".into()];
            a.extend(common(&fx.stream, &back_table));
            let (ok, out) = kcl(&strs(&a))?;
            assert!(ok, "export: {out}");
            let mut a = vec!["export".to_owned(), "--stream-identifier".into()];
            a.push(format!("123456789012:{}:1700000000", fx.multi_stream));
            a.extend(common(&fx.multi_stream, &back_table));
            let (ok, out) = kcl(&strs(&a))?;
            assert!(ok, "export of the multi-stream lease: {out}");
            let mut want: Vec<_> = fx.leases.iter().map(kept).collect();
            let mut got: Vec<_> = scan(&dynamo, &back_table).await?.iter().map(kept).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "export round-trips to an equal table");

            // A Butler session gets exactly the records after each checkpoint.
            let server = TestServer::start(&url, Emulator::Kinesalite, &["--lease-ttl", "3s"]).await?;
            let mut client = server.client().await?;
            let mut got: BTreeMap<String, Vec<Delivered>> = BTreeMap::new();
            let mut latest_marks = Vec::new();
            for (stream, prefix) in [(&fx.stream, ""), (&fx.multi_stream, "multi")] {
                let mut session = open_latest(&mut client, stream).await?;
                let expected: usize = fx
                    .want
                    .iter()
                    .filter(|(k, _)| k.contains('/') != prefix.is_empty())
                    .map(|(_, v)| v.len())
                    .sum();
                let mut n = 0;
                let mut mark = 0;
                within(60, "the records after the checkpoints", async {
                    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                    // Until every expected record and (on the first stream) a record put to
                    // the LATEST shard after the session opened have arrived.
                    while n < expected || (prefix.is_empty() && latest_marks.is_empty()) {
                        tokio::select! {
                            msg = session.events.message() => match msg? {
                                Some(pb::GetRecordsResponse { event: Some(Event::Records(b)) }) => {
                                    for r in b.records {
                                        let key = if prefix.is_empty() { b.shard_id.clone() } else { format!("{stream}/{}", b.shard_id) };
                                        if prefix.is_empty() && b.shard_id == fx.latest.0 {
                                            latest_marks.push(r.data.to_vec());
                                            continue;
                                        }
                                        n += 1;
                                        got.entry(key).or_default().push((r.sequence_number, r.sub_sequence_number, r.data.to_vec()));
                                    }
                                }
                                Some(pb::GetRecordsResponse { event: Some(Event::ShardEnded(e)) }) => {
                                    bail!("shard {} ended: a finished parent must not be read again", e.shard_id);
                                }
                                Some(_) => {}
                                None => bail!("session ended"),
                            },
                            _ = tick.tick(), if prefix.is_empty() => {
                                // LATEST starts whenever the reader asked for its iterator:
                                // put marks until one arrives.
                                put(&kinesis, stream, &fx.latest.1, format!("s2-new-{mark}").into_bytes()).await?;
                                mark += 1;
                            }
                        }
                    }
                    Ok(())
                })
                .await??;
            }
            assert!(
                latest_marks.iter().all(|d| d.starts_with(b"s2-new-")),
                "LATEST: nothing from before the session: {:?}",
                latest_marks.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect::<Vec<_>>()
            );
            assert_eq!(got, fx.want, "exactly the records after each checkpoint; children from their start");
            for s in [&fx.stream, &fx.multi_stream] {
                within(30, "DeleteStream", kinesis.delete_stream().stream_name(s).send()).await??;
            }
            Ok(())
        })
        .await;
    for t in [&kcl_table, &back_table] {
        let _ = dynamo.delete_table().table_name(t).send().await;
    }
    outcome
}

#[tokio::test]
async fn kcl_import_refuses_bad_tables_and_items_and_writes_nothing() -> Result<()> {
    test_env();
    let store = TestStore::dynamodb();
    let dynamo = dynamodb_client().await;
    let good = unique("kcl-ok");
    let bad = unique("kcl-bad");
    let outcome = store
        .run(async {
            let url = store.url();
            let import = |table: &str, extra: &[&str]| {
                let mut a = vec!["import", "--kcl-table", table, "--app", "app", "--stream", "s1", "--store", &url];
                a.extend_from_slice(&["--failover-time", "300ms"]);
                a.extend_from_slice(extra);
                kcl(&a)
            };
            // Missing.
            let missing = unique("kcl-none");
            let (ok, out) = import(&missing, &[])?;
            assert!(!ok && out.contains(&format!("KCL table {missing} does not exist")), "{out}");

            // Not a KCL table: Butler's own store table.
            let (ok, out) = kcl(&["export", "--kcl-table", &good, "--app", "app", "--stream", "s1", "--store", &url])?;
            assert!(!ok, "nothing to export yet: {out}");
            let butler_table = match &store {
                TestStore::DynamoDb { table } => table.clone(),
                _ => unreachable!(),
            };
            let (ok, out) = import(&butler_table, &[])?;
            assert!(!ok && out.contains(&format!("table {butler_table} is not a KCL lease table")), "{out}");

            // Wrong types in an item.
            create_kcl_like_table(&dynamo, &bad).await?;
            let ok_item: Item =
                [("leaseKey", s("shardId-000000000000")), ("leaseCounter", n(1)), ("checkpoint", s("TRIM_HORIZON"))]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
            dynamo.put_item().table_name(&bad).set_item(Some(ok_item.clone())).send().await?;
            let mut wrong = ok_item.clone();
            wrong.insert("leaseKey".into(), s("shardId-000000000001"));
            wrong.insert("leaseCounter".into(), s("one"));
            dynamo.put_item().table_name(&bad).set_item(Some(wrong)).send().await?;
            let (ok, out) = import(&bad, &[])?;
            assert!(!ok, "{out}");
            assert!(
                out.contains(&bad)
                    && out.contains("shardId-000000000001")
                    && out.contains("leaseCounter is S, KCL writes N"),
                "{out}"
            );

            // Live KCL leases: the counter moves while import watches.
            create_kcl_like_table(&dynamo, &good).await?;
            let mut held = ok_item.clone();
            held.insert("leaseOwner".into(), s("kcl-worker-9"));
            dynamo.put_item().table_name(&good).set_item(Some(held)).send().await?;
            let renewer = {
                let (dynamo, good) = (dynamo.clone(), good.clone());
                tokio::spawn(async move {
                    loop {
                        let _ = dynamo
                            .update_item()
                            .table_name(&good)
                            .key("leaseKey", s("shardId-000000000000"))
                            .update_expression("ADD leaseCounter :one")
                            .expression_attribute_values(":one", n(1))
                            .send()
                            .await;
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                })
            };
            let result = tokio::task::spawn_blocking({
                let (good, url) = (good.clone(), url.clone());
                move || {
                    kcl(&[
                        "import",
                        "--kcl-table",
                        &good,
                        "--app",
                        "app",
                        "--stream",
                        "s1",
                        "--store",
                        &url,
                        "--failover-time",
                        "500ms",
                    ])
                }
            })
            .await?;
            renewer.abort();
            let (ok, out) = result?;
            assert!(
                !ok && out.contains("live leases") && out.contains("kcl-worker-9") && out.contains("--force"),
                "{out}"
            );

            // Nothing was written by any of these.
            let leases = kinesis_butler::store::open(&url).await?;
            let written = leases.read_leases(&kinesis_butler::store::GroupKey::new("app", "s1")).await?;
            assert!(written.is_empty(), "nothing written: {written:?}");
            Ok(())
        })
        .await;
    for t in [&good, &bad] {
        let _ = dynamo.delete_table().table_name(t).send().await;
    }
    outcome
}
