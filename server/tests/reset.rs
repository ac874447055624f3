//! Replay and reset while a session is live (issue 20): `ResetLeases` and
//! `kinesis-butler leases reset`, against kinesis-local.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Result};
use common::*;
use kinesis_butler_proto as pb;
use pb::get_records_response::Event;
use pb::shard_revoked::Reason;

const APP: &str = "replay";

fn leases_state(d: &pb::DescribeLeasesResponse) -> Vec<(String, String, u64, String)> {
    d.leases.iter().map(|l| (l.shard_id.clone(), l.owner.clone(), l.epoch, l.checkpoint.clone())).collect()
}

fn reset_req(stream: &str, shard: &str, kind: pb::reset_position::Kind, seq: &str) -> pb::ResetLeasesRequest {
    pb::ResetLeasesRequest {
        app: APP.into(),
        stream: stream.into(),
        shard_id: shard.into(),
        to: Some(pb::ResetPosition { kind: kind as i32, timestamp_ms: 0, sequence_number: seq.into() }),
        dry_run: false,
    }
}

/// Receives until every shard in `expect` got its records (per shard, in order) and
/// returns what came per shard, with the LEASE_LOST revokes seen.
async fn receive(
    session: &mut RawSession,
    expect: &BTreeMap<String, usize>,
    secs: u64,
) -> Result<(BTreeMap<String, Vec<String>>, Vec<String>)> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lost = Vec::new();
    within(secs, "records after the reset", async {
        while expect.iter().any(|(s, n)| got.get(s).map_or(0, Vec::len) < *n) {
            match session.events.message().await? {
                Some(pb::GetRecordsResponse { event: Some(event) }) => match event {
                    Event::ShardAssigned(a) => {
                        session.epochs.insert(a.shard_id, a.lease_epoch);
                    }
                    Event::Records(b) => got
                        .entry(b.shard_id)
                        .or_default()
                        .extend(b.records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned())),
                    Event::ShardRevoked(r) if r.reason == Reason::LeaseLost as i32 => lost.push(r.shard_id),
                    _ => {}
                },
                _ => bail!("session ended"),
            }
        }
        Ok(())
    })
    .await??;
    Ok((got, lost))
}

fn cli(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_kinesis-butler"))
        .args(["leases", "reset"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KINESIS", Emulator::KinesisLocal.endpoint())
        .env("RUST_LOG", "warn")
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn resets_replay_skip_and_refuse_while_a_session_reads() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("reset");
    create_stream(&kinesis, &stream, 2).await?;
    let puts = put_records(&kinesis, &stream, 0, 40).await?;
    let data = |s: &str| puts[s].iter().map(|p| String::from_utf8_lossy(&p.data).into_owned()).collect::<Vec<_>>();
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("r.db").display());
    let server = TestServer::start(&store, Emulator::KinesisLocal, &[]).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, APP, &stream).await?;
    let all: BTreeMap<String, usize> = puts.iter().map(|(s, p)| (s.clone(), p.len())).collect();
    let (first, _) = receive(&mut session, &all, 60).await?;
    for (shard, records) in &first {
        assert_eq!(records, &data(shard), "first read of {shard}");
    }
    // Progress is stored, as a processor would.
    for (shard, p) in &puts {
        let req = pb::CheckpointRequest {
            session_id: session.id.clone(),
            stream: stream.clone(),
            shard_id: shard.clone(),
            lease_epoch: session.epochs[shard],
            sequence_number: p.last().unwrap().sequence_number.clone(),
            ..Default::default()
        };
        client.checkpoint(req).await?;
    }
    let old_epochs = session.epochs.clone();

    // Bad resets change nothing and say why.
    let before = leases_state(&describe(&mut client, APP, &stream).await?);
    let (a, b) = (puts.keys().next().unwrap().clone(), puts.keys().nth(1).unwrap().clone());
    use pb::reset_position::Kind;
    let cases = [
        (reset_req(&stream, "shardId-000000000099", Kind::TrimHorizon, ""), tonic::Code::NotFound, "no shard"),
        (
            pb::ResetLeasesRequest { app: "no-such-app".into(), ..reset_req(&stream, "", Kind::TrimHorizon, "") },
            tonic::Code::NotFound,
            "no leases",
        ),
        (
            reset_req(&stream, "", Kind::AfterSequenceNumber, &puts[&a][3].sequence_number),
            tonic::Code::InvalidArgument,
            "--shard",
        ),
        (reset_req(&stream, &a, Kind::AfterSequenceNumber, "12x"), tonic::Code::InvalidArgument, "malformed"),
        (
            reset_req(&stream, &a, Kind::AfterSequenceNumber, &puts[&b][3].sequence_number),
            tonic::Code::InvalidArgument,
            "is not in shard",
        ),
    ];
    for (req, code, says) in cases {
        let err = client.reset_leases(req.clone()).await.expect_err("refused");
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(says), "{req:?}: {}", err.message());
    }
    let (ok, text) = cli(&["--store", &store, "--app", APP, "--stream", &stream, "--to", "sequence=1", "--shard", &a])?;
    assert!(!ok && text.contains("is not in shard"), "{text}");
    let (ok, text) = cli(&["--store", &store, "--app", APP, "--stream", &stream, "--to", "trim-horizon", "--dry-run"])?;
    assert!(ok && text.contains("would reset") && text.contains(&a) && text.contains(&b), "{text}");
    assert_eq!(leases_state(&describe(&mut client, APP, &stream).await?), before, "nothing changed");

    // TRIM_HORIZON during consumption: both shards are revoked and replayed from the start.
    let reset = client.reset_leases(reset_req(&stream, "", Kind::TrimHorizon, "")).await?.into_inner();
    assert_eq!(reset.shards.len(), 2);
    for s in &reset.shards {
        assert_eq!((s.epoch, s.checkpoint.as_str()), (s.previous_epoch + 1, "0"), "{s:?}");
        assert_eq!(s.previous_owner, session.id);
    }
    let (replayed, lost) = receive(&mut session, &all, 60).await?;
    for (shard, records) in &replayed {
        assert_eq!(records, &data(shard), "replay of {shard} from the start");
    }
    assert_eq!(lost.len(), 2, "both readers were told LEASE_LOST: {lost:?}");
    let stale = pb::CheckpointRequest {
        session_id: session.id.clone(),
        stream: stream.clone(),
        shard_id: a.clone(),
        lease_epoch: old_epochs[&a],
        sequence_number: puts[&a].last().unwrap().sequence_number.clone(),
        ..Default::default()
    };
    let err = client.checkpoint(stale).await.expect_err("fenced");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // To a sequence number, through the CLI: exactly the records after it.
    let at = &puts[&a][4].sequence_number;
    let (ok, text) =
        cli(&["--store", &store, "--app", APP, "--stream", &stream, "--shard", &a, "--to", &format!("sequence={at}")])?;
    assert!(ok, "{text}");
    let only_a: BTreeMap<String, usize> = [(a.clone(), puts[&a].len() - 5)].into();
    let (after, _) = receive(&mut session, &only_a, 60).await?;
    assert_eq!(after[&a], data(&a)[5..].to_vec(), "exactly the records after {at}");
    assert!(!after.contains_key(&b), "the other shard was not touched: {after:?}");
    Ok(())
}
