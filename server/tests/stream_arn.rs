//! Streams named by ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`) on kinesis-local,
//! which accepts `StreamARN`: the server lists shards, gets iterators and reads with the
//! ARN (how cross-account reads work), and keys the leases by the string the client gave.

mod common;

use anyhow::{Context, Result};
use common::*;

#[tokio::test]
async fn a_stream_named_by_arn_is_read_and_keyed_by_its_arn() -> Result<()> {
    let kinesis = kinesis_client(Emulator::KinesisLocal);
    let stream = unique("arn");
    create_stream(&kinesis, &stream, 2).await?;
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .context("no stream ARN")?;
    assert!(arn.starts_with("arn:aws:kinesis:") && arn.ends_with(&format!(":stream/{stream}")), "{arn}");
    let put = put_records(&kinesis, &stream, 0, 200).await?;

    let server = TestServer::start("memory://", Emulator::KinesisLocal, &[]).await?;
    let mut client = server.client().await?;
    let mut session = open_session(&mut client, "app", &arn).await?;
    let got = session.collect(200, 60).await?;
    for (shard, puts) in &put {
        let seqs: Vec<&str> = got[shard].iter().map(|r| r.sequence_number.as_str()).collect();
        let want: Vec<&str> = puts.iter().map(|p| p.sequence_number.as_str()).collect();
        assert_eq!(seqs, want, "shard {shard}: every record once, in order, read by ARN");
    }
    let by_arn = describe(&mut client, "app", &arn).await?;
    assert_eq!(by_arn.leases.len(), 2, "leases keyed by the ARN as given");
    assert!(describe(&mut client, "app", &stream).await?.leases.is_empty(), "not by the bare name");

    // A malformed ARN-like name is a plain (unknown) stream name, not a crash.
    let bogus = format!("arn:aws:kinesis:us-east-1:12:stream/{stream}");
    let req = kinesis_butler_proto::GetRecordsRequest {
        app: "app".into(),
        streams: vec![bogus],
        client_name: "test".into(),
        ..Default::default()
    };
    let refused = within(30, "GetRecords on a bad ARN", client.get_records(req)).await?;
    assert!(refused.is_err(), "an unknown stream is refused");
    within(30, "DeleteStream", kinesis.delete_stream().stream_name(&stream).send()).await??;
    Ok(())
}
