//! De-aggregation of records written by the Kinesis Producer Library (KPL).
//!
//! An aggregated Kinesis record is `MAGIC ‖ protobuf(AggregatedRecord) ‖ md5(protobuf)`.
//! Its user records share the Kinesis record's sequence number and are told apart by
//! their index, the *sub-sequence number*. Data without the magic, or too short to hold
//! it and the checksum, is a plain record. Data with the magic whose checksum, protobuf
//! or partition-key index is wrong is *malformed*: the caller delivers it as the raw
//! record (sub-sequence 0) with a warning, never drops it.

use md5::{Digest, Md5};
use prost::Message;

/// The four bytes every KPL aggregate starts with.
pub(crate) const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const MD5_LEN: usize = 16;

/// The KPL's `AggregatedRecord` protobuf message (proto2).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct AggregatedRecord {
    /// Partition keys, referred to by index from the records.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referred to by index from the records.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, in sub-sequence order.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedUserRecord>,
}

/// One user record inside an [`AggregatedRecord`].
#[derive(Clone, PartialEq, Message)]
pub(crate) struct AggregatedUserRecord {
    /// Index into the partition key table.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into the explicit hash key table, if the producer set one.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user's payload.
    #[prost(bytes = "vec", required, tag = "3")]
    pub data: Vec<u8>,
    /// KPL tags (unused by consumers, kept so decoding is faithful).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A KPL tag.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Tag {
    /// Tag key.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Tag value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// A user record taken out of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRecord {
    /// Its index in the aggregate.
    pub sub_sequence_number: u64,
    /// Its partition key, from the aggregate's table.
    pub partition_key: String,
    /// Its payload.
    pub data: Vec<u8>,
}

/// Why data that starts with the KPL magic could not be de-aggregated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum MalformedAggregate {
    /// The MD5 of the protobuf bytes does not match the trailing checksum.
    #[error("MD5 checksum mismatch")]
    Checksum,
    /// The protobuf bytes do not decode.
    #[error("protobuf does not decode: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A record names a partition key the table does not have.
    #[error("user record {record} names partition key {index} of a table of {table}")]
    PartitionKeyIndex {
        /// Index of the user record.
        record: usize,
        /// The index it names.
        index: u64,
        /// Size of the partition key table.
        table: usize,
    },
    /// The aggregate holds no user record.
    #[error("aggregate holds no user record")]
    Empty,
}

/// What a Kinesis record's data turned out to be.
#[derive(Debug, PartialEq)]
pub(crate) enum Deaggregated {
    /// A plain record: deliver it as it is.
    Plain,
    /// A KPL aggregate: deliver these user records instead.
    Aggregate(Vec<UserRecord>),
    /// It starts with the KPL magic but is broken: deliver it raw, with a warning.
    Malformed(MalformedAggregate),
}

/// Whether `data` has the shape of a KPL aggregate (magic and room for a checksum).
pub(crate) fn is_aggregate(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + MD5_LEN && data.starts_with(&MAGIC)
}

/// Splits a Kinesis record's data into user records if it is a KPL aggregate.
pub(crate) fn deaggregate(data: &[u8]) -> Deaggregated {
    if !is_aggregate(data) {
        return Deaggregated::Plain;
    }
    match decode(data) {
        Ok(records) => Deaggregated::Aggregate(records),
        Err(e) => Deaggregated::Malformed(e),
    }
}

fn decode(data: &[u8]) -> Result<Vec<UserRecord>, MalformedAggregate> {
    let (body, checksum) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - MD5_LEN);
    if Md5::digest(body).as_slice() != checksum {
        return Err(MalformedAggregate::Checksum);
    }
    let aggregate = AggregatedRecord::decode(body)?;
    if aggregate.records.is_empty() {
        return Err(MalformedAggregate::Empty);
    }
    let table = aggregate.partition_key_table;
    aggregate
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = usize::try_from(r.partition_key_index).ok().and_then(|k| table.get(k));
            match key {
                Some(key) => Ok(UserRecord { sub_sequence_number: i as u64, partition_key: key.clone(), data: r.data }),
                None => Err(MalformedAggregate::PartitionKeyIndex {
                    record: i,
                    index: r.partition_key_index,
                    table: table.len(),
                }),
            }
        })
        .collect()
}

/// Builds a KPL aggregate of `(partition key, data)` user records (for tests and tools;
/// the server only reads aggregates).
#[cfg(test)]
pub(crate) fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let mut message = AggregatedRecord::default();
    for (key, data) in records {
        let index = match keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                keys.push((*key).to_owned());
                keys.len() - 1
            }
        };
        message.records.push(AggregatedUserRecord {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: data.to_vec(),
            tags: Vec::new(),
        });
    }
    message.partition_key_table = keys;
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + MD5_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(Md5::digest(&body).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by PyPI `aws-kinesis-agg` 1.2.3: user records ("pk1", "hello"), ("pk2", "world").
    const FROM_PYTHON: &str =
        "f3899ac20a03706b310a03706b321a0908001a0568656c6c6f1a0908011a05776f726c6487c22af1ed18e292eb55b018413a3cff";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn decodes_the_reference_encoder() {
        let got = deaggregate(&hex(FROM_PYTHON));
        assert_eq!(
            got,
            Deaggregated::Aggregate(vec![
                UserRecord { sub_sequence_number: 0, partition_key: "pk1".into(), data: b"hello".to_vec() },
                UserRecord { sub_sequence_number: 1, partition_key: "pk2".into(), data: b"world".to_vec() },
            ])
        );
        assert_eq!(
            aggregate(&[("pk1", b"hello"), ("pk2", b"world")]),
            hex(FROM_PYTHON),
            "same bytes as the KPL format"
        );
    }

    #[test]
    fn plain_records_stay_plain() {
        assert_eq!(deaggregate(b"hello"), Deaggregated::Plain);
        assert_eq!(deaggregate(&[]), Deaggregated::Plain);
        // The magic alone, without room for a checksum, is not an aggregate.
        assert_eq!(deaggregate(&MAGIC), Deaggregated::Plain);
    }

    #[test]
    fn malformed_aggregates_are_reported() {
        let mut bad_sum = aggregate(&[("k", b"v")]);
        let last = bad_sum.len() - 1;
        bad_sum[last] ^= 1;
        assert_eq!(deaggregate(&bad_sum), Deaggregated::Malformed(MalformedAggregate::Checksum));

        let with_body = |body: &[u8]| {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(body);
            out.extend_from_slice(Md5::digest(body).as_slice());
            out
        };
        assert!(matches!(
            deaggregate(&with_body(&[0xff, 0xff, 0xff])),
            Deaggregated::Malformed(MalformedAggregate::Protobuf(_))
        ));
        assert_eq!(deaggregate(&with_body(&[])), Deaggregated::Malformed(MalformedAggregate::Empty));
        let bad_index = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![AggregatedUserRecord {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: vec![1],
                tags: vec![],
            }],
        };
        assert_eq!(
            deaggregate(&with_body(&bad_index.encode_to_vec())),
            Deaggregated::Malformed(MalformedAggregate::PartitionKeyIndex { record: 0, index: 3, table: 1 })
        );
    }
}
