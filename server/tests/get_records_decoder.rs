//! The server's own GetRecords decoder (`get_records_decoder.rs`) against the SDK's, on
//! the same pages of both emulators: binary payloads, non-ASCII partition keys, one-byte
//! and 1 MB records, arrival timestamps and the next iterator.

mod common;

use anyhow::Result;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use common::*;
use kinesis_butler::retrieval::kinesis::Kinesis;
use kinesis_butler::retrieval::source::ShardSource;

#[tokio::test]
async fn decodes_what_the_sdk_decodes_on_both_emulators() -> Result<()> {
    for emulator in [Emulator::KinesisLocal, Emulator::Kinesalite] {
        let sdk = kinesis_client(emulator);
        let stream = unique("decoder");
        create_stream(&sdk, &stream, 1).await?;
        let payloads: Vec<Vec<u8>> = vec![
            (0..=255u8).collect(),
            b"{\"json\": \"with \\\\ escapes and / slashes\"}".to_vec(),
            vec![0xff; 1024 * 1024 - 64],
            "ünïcødé ✓".as_bytes().to_vec(),
            vec![b'x'],
        ];
        let entries = payloads
            .iter()
            .enumerate()
            .map(|(i, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("clé-{i}-🔑"))
                    .data(Blob::new(data.clone()))
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        for entry in entries {
            // One at a time: a PutRecords call is capped at 5 MB and the 1 MB record fills much of it.
            let out = within(30, "PutRecords", sdk.put_records().stream_name(&stream).records(entry).send()).await??;
            assert_eq!(out.failed_record_count(), Some(0));
        }
        let shards = sdk.list_shards().stream_name(&stream).send().await?;
        let shard = shards.shards()[0].shard_id().to_owned();
        let iterator = sdk
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(&shard)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .expect("an iterator");

        let theirs = within(30, "SDK GetRecords", sdk.get_records().shard_iterator(&iterator).send()).await??;
        let ours =
            within(30, "server GetRecords", Kinesis::from_client(sdk.clone()).get_records(&iterator, 10_000)).await??;
        assert_eq!(ours.records.len(), payloads.len(), "{emulator:?}: every record");
        assert_eq!(ours.records, theirs.records(), "{emulator:?}: records decode alike");
        for (record, data) in ours.records.iter().zip(&payloads) {
            assert_eq!(record.data().as_ref(), data.as_slice(), "{emulator:?}");
        }
        assert!(ours.next_iterator.is_some() && theirs.next_shard_iterator().is_some(), "{emulator:?}: open shard");
    }
    Ok(())
}
