//! Bad requests get a clear status, change nothing stored, and the server keeps serving.

mod common;

use anyhow::Result;
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use tonic::transport::Channel;
use tonic::Code;

async fn checkpoints(client: &mut ButlerClient<Channel>, stream: &str) -> Result<Vec<(String, String, u64)>> {
    let req = pb::DescribeLeasesRequest { app: "app".into(), stream: stream.into() };
    let leases = within(10, "describe", client.describe_leases(req)).await??.into_inner().leases;
    Ok(leases.into_iter().map(|l| (l.shard_id, l.checkpoint, l.epoch)).collect())
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(!status.message().is_empty(), "status {:?} carries a message", status.code());
            status.code()
        }
    }
}

#[tokio::test]
async fn bad_requests_are_rejected_and_change_nothing() -> Result<()> {
    let emulator = Emulator::Kinesalite;
    let kinesis = kinesis_client(emulator);
    let stream = unique("bad");
    create_stream(&kinesis, &stream, 2).await?;
    let put = put_records(&kinesis, &stream, 0, 40).await?;
    let dir = tempfile::tempdir()?;
    let server = TestServer::start(&format!("sqlite://{}", dir.path().join("b.db").display()), emulator, &[]).await?;
    let mut client = server.client().await?;

    // Unknown stream, empty app or stream list.
    let init = |app: &str, streams: Vec<String>| pb::InitializeRequest { app: app.into(), streams };
    assert_eq!(code(client.initialize(init("app", vec![unique("missing")])).await), Code::NotFound);
    assert_eq!(code(client.initialize(init("", vec![stream.clone()])).await), Code::InvalidArgument);
    assert_eq!(code(client.initialize(init("app", vec![])).await), Code::InvalidArgument);
    assert_eq!(code(client.initialize(init("app", vec![String::new()])).await), Code::InvalidArgument);
    let open =
        |app: &str, streams: Vec<String>| pb::GetRecordsRequest { app: app.into(), streams, ..Default::default() };
    assert_eq!(code(client.get_records(open("app", vec![unique("missing")])).await), Code::NotFound);
    assert_eq!(code(client.get_records(open("", vec![stream.clone()])).await), Code::InvalidArgument);
    assert_eq!(code(client.get_records(open("app", vec![])).await), Code::InvalidArgument);
    let mut too_big = open("app", vec![stream.clone()]);
    too_big.max_records_per_batch = 20_000;
    assert_eq!(code(client.get_records(too_big).await), Code::InvalidArgument);

    // A session that reads everything and stores one good checkpoint per shard.
    let mut session = open_session(&mut client, "app", &stream).await?;
    session.collect(40, 30).await?;
    let mut good = Vec::new();
    for (shard, puts) in &put {
        let req = pb::CheckpointRequest {
            session_id: session.id.clone(),
            stream: stream.clone(),
            shard_id: shard.clone(),
            lease_epoch: session.epochs[shard],
            sequence_number: puts[puts.len() - 1].sequence_number.clone(),
            ..Default::default()
        };
        within(10, "good checkpoint", client.checkpoint(req.clone())).await??;
        good.push(req);
    }
    let stored = checkpoints(&mut client, &stream).await?;

    let g = &good[0];
    let with = |f: &dyn Fn(&mut pb::CheckpointRequest)| {
        let mut r = g.clone();
        f(&mut r);
        r
    };
    let earlier = put[&g.shard_id][0].sequence_number.clone();
    let cases: Vec<(&str, pb::CheckpointRequest, Code)> = vec![
        ("stale epoch", with(&|r| r.lease_epoch -= 1), Code::FailedPrecondition),
        ("future epoch", with(&|r| r.lease_epoch += 7), Code::FailedPrecondition),
        ("unknown session", with(&|r| r.session_id = "no-such-session".into()), Code::NotFound),
        ("unknown shard", with(&|r| r.shard_id = "shardId-000000000999".into()), Code::NotFound),
        ("unknown stream", with(&|r| r.stream = "other".into()), Code::NotFound),
        ("malformed sequence", with(&|r| r.sequence_number = "12ab".into()), Code::InvalidArgument),
        ("negative sequence", with(&|r| r.sequence_number = "-5".into()), Code::InvalidArgument),
        ("backwards", with(&|r| r.sequence_number = earlier.clone()), Code::InvalidArgument),
        // A string compare would take "9" as larger than a 56-digit number.
        ("backwards, shorter", with(&|r| r.sequence_number = "9".into()), Code::InvalidArgument),
        ("empty session", with(&|r| r.session_id.clear()), Code::InvalidArgument),
        ("empty shard", with(&|r| r.shard_id.clear()), Code::InvalidArgument),
        ("no sequence", with(&|r| r.sequence_number.clear()), Code::InvalidArgument),
    ];
    for (what, req, want) in cases {
        let got = code(within(10, what, client.checkpoint(req)).await?);
        assert_eq!(got, want, "{what}");
        assert_eq!(checkpoints(&mut client, &stream).await?, stored, "{what} changed stored state");
    }

    // A shard held by another session: a second session of the same app tries it.
    let other = open_session(&mut client, "app", &stream).await?;
    let foreign = pb::CheckpointRequest { session_id: other.id.clone(), ..g.clone() };
    assert_eq!(code(within(10, "foreign", client.checkpoint(foreign)).await?), Code::FailedPrecondition);
    let after = checkpoints(&mut client, &stream).await?;
    let cps = |v: &[(String, String, u64)]| v.iter().map(|(s, c, _)| (s.clone(), c.clone())).collect::<Vec<_>>();
    assert_eq!(cps(&after), cps(&stored), "foreign checkpoint changed nothing");

    // Still serving after all of it.
    let status = within(10, "initialize", client.initialize(init("app", vec![stream.clone()]))).await??.into_inner();
    assert_eq!(status.streams[0].open_shards, 2);
    drop(other);
    Ok(())
}

/// Thousands of small calls at once on one connection (a processor releasing every shard
/// it holds after a rebalance) are each answered: the server's HTTP/2 layer must not take
/// the burst of small frames for a flood and cut the connection (`ENHANCE_YOUR_CALM`),
/// which would end every session on it.
#[tokio::test]
async fn a_burst_of_small_calls_on_one_connection_is_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("burst.db").display());
    let server = TestServer::start(&store, Emulator::Kinesalite, &[]).await?;
    let client = server.client().await?;
    within(10, "a first call", client.clone().checkpoint(pb::CheckpointRequest::default())).await?.ok();
    // Tiny requests (each DATA frame costs h2's small-frame budget the most), sent while
    // the server is stopped, so that it finds thousands of them at once when it goes on,
    // as a busy server does.
    let pid = server.child.id().to_string();
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status();
    signal("-STOP")?;
    let calls: Vec<_> = (0..20_000)
        .map(|i| {
            let mut client = client.clone();
            let req = pb::CheckpointRequest { session_id: format!("s{i}"), ..Default::default() };
            tokio::spawn(async move { client.checkpoint(req).await.map_err(|s| s.code()) })
        })
        .collect();
    // Fault injection, not synchronisation: time for the calls to fill the socket.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    signal("-CONT")?;
    let replies = within(120, "20000 calls", futures::future::try_join_all(calls)).await??;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for reply in replies {
        *codes.entry(format!("{:?}", reply.err())).or_default() += 1;
    }
    assert_eq!(codes.keys().collect::<Vec<_>>(), ["Some(InvalidArgument)"], "every call answered: {codes:?}");
    Ok(())
}
