//! The Kinesis side: listing shards, shard iterators and GetRecords through
//! aws-sdk-kinesis, with every failure sorted into what the reader should do about it.

use std::time::Duration;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEvent, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use tracing::info;

use async_trait::async_trait;

use crate::retrieval::source::{Page, ShardSource, Subscription};

use crate::store::ShardInfo;

/// Kinesis failures, sorted by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    /// The stream or shard does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Throttled (`ProvisionedThroughputExceededException`, `LimitExceededException`):
    /// back off and retry.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator expired: get a fresh one.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// Network errors, timeouts and 5xx: back off and retry.
    #[error("transient Kinesis error: {0}")]
    Transient(String),
    /// The request was rejected; retrying will not help.
    #[error("Kinesis rejected the request: {0}")]
    Rejected(String),
}

impl KinesisError {
    fn from_sdk<E, R>(err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let text = match err.message() {
            Some(m) => format!("{}: {m}", err.code().unwrap_or("error")),
            None => aws_sdk_kinesis::error::DisplayErrorContext(&err).to_string(),
        };
        match &err {
            SdkError::ServiceError(_) => match err.code() {
                Some("ResourceNotFoundException") => KinesisError::NotFound(text),
                Some("ProvisionedThroughputExceededException")
                | Some("LimitExceededException")
                | Some("KMSThrottlingException")
                | Some("ThrottlingException") => KinesisError::Throttled(text),
                Some("ExpiredIteratorException") => KinesisError::ExpiredIterator,
                Some("InvalidArgumentException") | Some("AccessDeniedException") | Some("ValidationException") => {
                    KinesisError::Rejected(text)
                }
                _ => KinesisError::Transient(text),
            },
            _ => KinesisError::Transient(text),
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            KinesisError::NotFound(_) => "not_found",
            KinesisError::Throttled(_) => "throttled",
            KinesisError::ExpiredIterator => "expired_iterator",
            KinesisError::Transient(_) => "transient",
            KinesisError::Rejected(_) => "rejected",
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KinesisError::Throttled(_) | KinesisError::Transient(_))
    }
}

/// Where a new shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorStart {
    /// Right after this sequence number (resuming from a checkpoint).
    AfterSequence(String),
    /// At this sequence number (re-reading an aggregate from its middle).
    AtSequence(String),
    /// The oldest record.
    TrimHorizon,
    /// Only new records.
    Latest,
    /// First record at or after this time (ms since the Unix epoch).
    AtTimestamp(i64),
}

/// A stream named by its ARN, `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamArn {
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Account id owning the stream (another account's for cross-account reads).
    pub account: String,
    /// Stream name.
    pub name: String,
}

impl StreamArn {
    /// Parses a Kinesis stream ARN; `None` for a plain stream name or any other ARN.
    pub fn parse(text: &str) -> Option<StreamArn> {
        let mut parts = text.splitn(6, ':');
        let (arn, partition, service) = (parts.next()?, parts.next()?, parts.next()?);
        let (region, account, resource) = (parts.next()?, parts.next()?, parts.next()?);
        let name = resource.strip_prefix("stream/")?;
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        let valid = arn == "arn"
            && partition.starts_with("aws")
            && service == "kinesis"
            && !region.is_empty()
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit());
        (valid && valid_name).then(|| StreamArn { region: region.into(), account: account.into(), name: name.into() })
    }
}

/// Sets `StreamARN` when `stream` is a stream ARN (how cross-account reads work), else
/// `StreamName`, on any request builder that has both.
macro_rules! stream_ref {
    ($builder:expr, $stream:expr) => {{
        let stream: &str = $stream;
        if StreamArn::parse(stream).is_some() {
            $builder.stream_arn(stream)
        } else {
            $builder.stream_name(stream)
        }
    }};
}

/// A Kinesis client configured from the standard AWS chain.
#[derive(Clone, Debug)]
pub struct Kinesis {
    client: Client,
}

impl Kinesis {
    /// Builds a client from the environment (`AWS_REGION`, `AWS_ENDPOINT_URL_KINESIS`,
    /// `AWS_ENDPOINT_URL`, credentials chain), with bounded call timeouts.
    pub async fn from_env() -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts).load().await;
        Self { client: Client::new(&config) }
    }

    /// Wraps an existing SDK client.
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ShardSource for Kinesis {
    /// Every shard of the stream, following ListShards pages.
    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // With a NextToken the stream name must not be sent.
            let request = match &next {
                Some(token) => self.client.list_shards().next_token(token),
                None => stream_ref!(self.client.list_shards(), stream),
            };
            let out = request.send().await.map_err(KinesisError::from_sdk)?;
            for s in out.shards() {
                let parent_shard_ids = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect();
                // Closed is told by the presence of an ending sequence number, never by
                // its value (kinesis-mock reports i64::MAX).
                let closed = s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
                shards.push(ShardInfo { shard_id: s.shard_id().to_owned(), parent_shard_ids, closed });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        shards.dedup_by(|a, b| a.shard_id == b.shard_id);
        Ok(shards)
    }

    /// Registers the enhanced fan-out consumer `name` on the stream (or finds it if it
    /// exists) and waits, up to `wait`, until it is ACTIVE. Returns its ARN.
    async fn register_consumer(&self, stream: &str, name: &str, wait: Duration) -> Result<String, KinesisError> {
        let summary =
            stream_ref!(self.client.describe_stream_summary(), stream).send().await.map_err(KinesisError::from_sdk)?;
        let stream_arn = summary
            .stream_description_summary()
            .map(|s| s.stream_arn().to_owned())
            .ok_or_else(|| KinesisError::Transient("DescribeStreamSummary returned no stream".into()))?;
        let registered =
            self.client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await;
        let arn = match registered {
            Ok(out) => {
                let arn = out.consumer().map(|c| c.consumer_arn().to_owned());
                info!(stream, consumer = name, "registered the enhanced fan-out consumer");
                arn.ok_or_else(|| KinesisError::Transient("RegisterStreamConsumer returned no consumer".into()))?
            }
            // It exists already (registered before, or by another instance).
            Err(e) if e.code() == Some("ResourceInUseException") => {
                let out = self
                    .client
                    .describe_stream_consumer()
                    .stream_arn(&stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                    .map_err(KinesisError::from_sdk)?;
                out.consumer_description()
                    .map(|c| c.consumer_arn().to_owned())
                    .ok_or_else(|| KinesisError::Transient("DescribeStreamConsumer returned no consumer".into()))?
            }
            Err(e) => return Err(KinesisError::from_sdk(e)),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let out = self
                .client
                .describe_stream_consumer()
                .consumer_arn(&arn)
                .send()
                .await
                .map_err(KinesisError::from_sdk)?;
            let status = out.consumer_description().map(|c| c.consumer_status().clone());
            match status {
                Some(ConsumerStatus::Active) => return Ok(arn),
                Some(ConsumerStatus::Deleting) => {
                    return Err(KinesisError::Transient(format!("consumer {name} is being deleted")))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(KinesisError::Transient(format!(
                        "consumer {name} did not become ACTIVE within {wait:?}"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Subscribes the fan-out consumer to a shard from `start`.
    async fn subscribe(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        start: &IteratorStart,
    ) -> Result<Subscription, KinesisError> {
        let (kind, sequence, timestamp) = iterator_parts(start);
        let mut position = StartingPosition::builder().r#type(kind);
        if let Some(seq) = sequence {
            position = position.sequence_number(seq);
        }
        if let Some(ts) = timestamp {
            position = position.timestamp(ts);
        }
        let position = position.build().map_err(|e| KinesisError::Rejected(e.to_string()))?;
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(position)
            .send()
            .await
            .map_err(KinesisError::from_sdk)?;
        Ok(Subscription::new(sdk_events(out.event_stream)))
    }

    /// A shard iterator at `start`.
    async fn shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        start: &IteratorStart,
    ) -> Result<String, KinesisError> {
        let (kind, sequence, timestamp) = iterator_parts(start);
        let out = stream_ref!(self.client.get_shard_iterator(), stream)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence)
            .set_timestamp(timestamp)
            .send()
            .await
            .map_err(KinesisError::from_sdk)?;
        out.shard_iterator.ok_or_else(|| KinesisError::Transient("GetShardIterator returned no iterator".into()))
    }

    /// One GetRecords call.
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, KinesisError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit as i32)
            .customize()
            .interceptor(crate::retrieval::get_records_decoder::FastGetRecords)
            .send()
            .await
            .map_err(KinesisError::from_sdk)?;
        Ok(Page {
            millis_behind_latest: out.millis_behind_latest().unwrap_or(0),
            next_iterator: out.next_shard_iterator.clone(),
            records: out.records,
        })
    }
}

/// The iterator type, sequence number and timestamp of a start position.
fn iterator_parts(start: &IteratorStart) -> (ShardIteratorType, Option<String>, Option<DateTime>) {
    match start {
        IteratorStart::AfterSequence(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq.clone()), None),
        IteratorStart::AtSequence(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq.clone()), None),
        IteratorStart::TrimHorizon => (ShardIteratorType::TrimHorizon, None, None),
        IteratorStart::Latest => (ShardIteratorType::Latest, None, None),
        IteratorStart::AtTimestamp(ms) => (ShardIteratorType::AtTimestamp, None, Some(DateTime::from_millis(*ms))),
    }
}

/// The SDK's event receiver as a stream of events (events of types newer than this SDK
/// are skipped: nothing to deliver).
fn sdk_events(
    events: EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>,
) -> futures::stream::BoxStream<'static, Result<SubscribeToShardEvent, KinesisError>> {
    Box::pin(futures::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    return Some((Ok(event), events))
                }
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some((Err(KinesisError::from_sdk(e)), events)),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::StreamArn;

    #[test]
    fn stream_arns_parse_and_names_do_not() {
        let arn = StreamArn::parse("arn:aws:kinesis:eu-west-1:123456789012:stream/orders.v2").unwrap();
        assert_eq!(
            arn,
            StreamArn { region: "eu-west-1".into(), account: "123456789012".into(), name: "orders.v2".into() }
        );
        assert!(StreamArn::parse("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s").is_some());
        for not in [
            "orders",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/",
            "arn:aws:kinesis:eu-west-1:1234:stream/s",
            "arn:aws:sqs:eu-west-1:123456789012:stream/s",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/s/consumer/c:1",
            "arn:aws:kinesis::123456789012:stream/s",
        ] {
            assert_eq!(StreamArn::parse(not), None, "{not}");
        }
    }
}
