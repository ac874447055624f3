//! A faster decoder for GetRecords responses, plugged into the SDK.
//!
//! The SDK's JSON deserializer walks every string byte by byte; for pages of large records
//! it was the server's biggest cost (a quarter of its CPU at 1 KB records). This decoder
//! parses the same awsJson 1.1 body with serde_json (borrowed strings, word-at-a-time
//! scanning) and base64-simd, and builds the SDK's own output type, so signing, retries,
//! endpoints and error responses all stay with the SDK: it only takes over responses with
//! a success status.

use std::borrow::Cow;

use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{EncryptionType, Record};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, Error, Output,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::config_bag::ConfigBag;
use serde::Deserialize;

/// Interceptor for GetRecords calls: decodes success responses itself.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastGetRecords;

impl Intercept for FastGetRecords {
    fn name(&self) -> &'static str {
        "FastGetRecords"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Error responses keep the SDK's deserializer, and so its typed errors and its
        // retries. A success ends the call (a body this decoder cannot read is an error
        // that is not retried), so no later attempt sees the swapped deserializer.
        if context.response().status().is_success() {
            cfg.interceptor_state().store_put(SharedResponseDeserializer::new(FastDeserializer));
        }
        Ok(())
    }
}

/// Decodes the body of a successful GetRecords response.
#[derive(Debug)]
struct FastDeserializer;

impl DeserializeResponse for FastDeserializer {
    fn deserialize_nonstreaming_with_config(
        &self,
        response: &HttpResponse,
        _cfg: &ConfigBag,
    ) -> Result<Output, OrchestratorError<Error>> {
        match response.body().bytes().map(decode) {
            Some(Ok(output)) => Ok(Output::erase(output)),
            Some(Err(e)) => Err(OrchestratorError::other(format!("unreadable GetRecords response: {e}"))),
            None => Err(OrchestratorError::other("GetRecords response body was not read into memory")),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page<'a> {
    #[serde(borrow, default)]
    records: Vec<WireRecord<'a>>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRecord<'a> {
    sequence_number: String,
    approximate_arrival_timestamp: Option<f64>,
    /// Base64, read as bytes: borrowed from the body unless it holds JSON escapes, and
    /// not checked as UTF-8 (the base64 decoder rejects anything that is not base64).
    #[serde(borrow)]
    data: Cow<'a, [u8]>,
    partition_key: String,
    encryption_type: Option<String>,
}

/// Decodes a GetRecords response body.
pub(crate) fn decode(body: &[u8]) -> Result<GetRecordsOutput, BoxError> {
    let page: Page<'_> = serde_json::from_slice(body)?;
    let mut records = Vec::with_capacity(page.records.len());
    for r in page.records {
        let data = base64_simd::STANDARD.decode_to_vec(&r.data)?;
        let record = Record::builder()
            .sequence_number(r.sequence_number)
            .set_approximate_arrival_timestamp(r.approximate_arrival_timestamp.map(DateTime::from_secs_f64))
            .data(Blob::new(data))
            .partition_key(r.partition_key)
            .set_encryption_type(r.encryption_type.as_deref().map(EncryptionType::from))
            .build()?;
        records.push(record);
    }
    Ok(GetRecordsOutput::builder()
        .set_records(Some(records))
        .set_next_shard_iterator(page.next_shard_iterator)
        .set_millis_behind_latest(page.millis_behind_latest)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_records_iterator_and_lag() {
        let body = br#"{"Records":[
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.70000000025E9,
             "Data":"aGVsbG8=","PartitionKey":"p\u00e9\"k","EncryptionType":"KMS"},
            {"SequenceNumber":"2","Data":"YS9i\/Yw=","PartitionKey":"k2","Unknown":{"x":[1]}}],
            "NextShardIterator":"it-2","MillisBehindLatest":42,"ChildShards":[]}"#;
        let out = decode(body).expect("decodes");
        let records = out.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].sequence_number(), "49590338271490256608559692538361571095921575989136588898");
        assert_eq!(records[0].data().as_ref(), b"hello");
        assert_eq!(records[0].partition_key(), Some("p\u{e9}\"k"));
        assert_eq!(records[0].encryption_type(), Some(&EncryptionType::Kms));
        assert_eq!(records[0].approximate_arrival_timestamp().map(|t| t.to_millis().unwrap()), Some(1_700_000_000_250));
        // An escaped '/' inside the base64 text is still decoded.
        assert_eq!(records[1].data().as_ref(), b"a/b\xfd\x8c");
        assert_eq!(records[1].approximate_arrival_timestamp(), None);
        assert_eq!(out.next_shard_iterator(), Some("it-2"));
        assert_eq!(out.millis_behind_latest(), Some(42));
    }

    #[test]
    fn end_of_a_closed_shard_has_no_iterator() {
        let out = decode(br#"{"Records":[],"MillisBehindLatest":0}"#).expect("decodes");
        assert!(out.records().is_empty());
        assert_eq!(out.next_shard_iterator(), None);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &b"not json"[..],
            br#"{"Records":[{"SequenceNumber":"1","Data":"not base64!","PartitionKey":"k"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"k"}]}"#,
            br#"{"Records":"x"}"#,
        ] {
            assert!(decode(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
