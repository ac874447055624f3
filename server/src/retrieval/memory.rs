//! An in-memory [`ShardSource`]: streams of shards holding records, for unit tests of the
//! readers and the group worker (no emulator, no network) and for the benchmark's source
//! model. Iterators are `stream/shard/index` strings; sequence numbers are 56-digit
//! decimals that increase within a shard, as Kinesis's do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::Record;

use crate::retrieval::kinesis::{IteratorStart, KinesisError};
use crate::retrieval::source::{Page, ShardSource, Subscription};
use crate::seqnum::SequenceNumber;
use crate::store::ShardInfo;

#[derive(Debug, Default)]
struct Shard {
    index: usize,
    parents: Vec<String>,
    closed: bool,
    records: Vec<Record>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, BTreeMap<String, Shard>>,
    /// Failures returned by the next calls, in order (fault injection).
    faults: VecDeque<KinesisError>,
    list_shards_calls: u64,
    get_records_calls: u64,
}

/// Streams held in memory. Cheap to clone through its `Arc`.
#[derive(Debug, Default)]
pub struct MemorySource {
    state: Mutex<State>,
}

fn shard_name(index: usize) -> String {
    format!("shardId-{index:012}")
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory source")
    }

    /// Creates a stream with `shards` open shards (`shardId-000000000000`, …).
    pub fn create_stream(&self, stream: &str, shards: usize) {
        let map = (0..shards).map(|i| (shard_name(i), Shard { index: i, ..Shard::default() })).collect();
        self.state().streams.insert(stream.to_owned(), map);
    }

    /// Creates a stream of `shards` open shards, each holding `records` pre-generated
    /// records of `size` bytes (`shard-<s>-record-<i>-xxx…`, partition key `pk-<i>`): the
    /// benchmark's source model.
    pub fn create_generated(&self, stream: &str, shards: usize, records: usize, size: usize) {
        self.create_stream(stream, shards);
        let arrival = DateTime::from_millis(crate::clock::now_ms());
        let mut state = self.state();
        let map = state.streams.get_mut(stream).expect("just created");
        for (s, shard) in map.values_mut().enumerate() {
            shard.records.reserve_exact(records);
            for i in 0..records {
                let mut data = format!("shard-{s}-record-{i:010}-").into_bytes();
                data.resize(size.max(data.len()), b'x');
                let record = Record::builder()
                    .sequence_number(format!("4959{:04}{:048}", shard.index, i + 1))
                    .partition_key(format!("pk-{i}"))
                    .data(Blob::new(data))
                    .approximate_arrival_timestamp(arrival)
                    .build()
                    .expect("complete record");
                shard.records.push(record);
            }
        }
    }

    /// A source of generated streams from a spec `NAME=SHARDS[xRECORDS[xBYTES]]`, several
    /// separated by commas (records default to 0, bytes to 100), as given to the server's
    /// hidden `--memory-source` option for benchmarks.
    pub fn from_spec(spec: &str) -> Result<Arc<Self>, String> {
        let source = Self::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("bad memory source {part:?}: use NAME=SHARDS[xRECORDS[xBYTES]]");
            let (name, sizes) = part.split_once('=').ok_or_else(bad)?;
            let numbers: Vec<usize> =
                sizes.split('x').map(|n| n.parse::<usize>().map_err(|_| bad())).collect::<Result<_, _>>()?;
            let (shards, records, size) = match numbers[..] {
                [s] => (s, 0, 100),
                [s, r] => (s, r, 100),
                [s, r, b] => (s, r, b),
                _ => return Err(bad()),
            };
            if name.is_empty() || shards == 0 || shards > 10_000 {
                return Err(format!("bad memory source {part:?}: a name and 1 to 10000 shards"));
            }
            source.create_generated(name, shards, records, size);
        }
        Ok(source)
    }

    /// The position an iterator of this source names: (stream, shard id, record index).
    pub fn iterator_position(iterator: &str) -> Option<(&str, &str, usize)> {
        let mut parts = iterator.rsplitn(3, '/');
        let index = parts.next()?.parse().ok()?;
        let shard_id = parts.next()?;
        Some((parts.next()?, shard_id, index))
    }

    /// Appends a record to a shard; returns its sequence number.
    pub fn put(&self, stream: &str, shard_id: &str, partition_key: &str, data: &[u8]) -> String {
        let mut state = self.state();
        let shard = state.streams.get_mut(stream).and_then(|s| s.get_mut(shard_id)).expect("known open shard");
        assert!(!shard.closed, "put to closed shard {shard_id}");
        let sequence = format!("4959{:04}{:048}", shard.index, shard.records.len() + 1);
        let record = Record::builder()
            .sequence_number(&sequence)
            .partition_key(partition_key)
            .data(Blob::new(data))
            .approximate_arrival_timestamp(DateTime::from_millis(crate::clock::now_ms()))
            .build()
            .expect("complete record");
        shard.records.push(record);
        sequence
    }

    /// Closes `parent` and opens `children` whose parent it is (a split, or with two
    /// children of one parent the same shape as Kinesis's split).
    pub fn reshard(&self, stream: &str, parent: &str, children: usize) -> Vec<String> {
        let mut state = self.state();
        let shards = state.streams.get_mut(stream).expect("known stream");
        shards.get_mut(parent).expect("known shard").closed = true;
        let first = shards.values().map(|s| s.index).max().unwrap_or(0) + 1;
        (first..first + children)
            .map(|i| {
                let name = shard_name(i);
                shards.insert(name.clone(), Shard { index: i, parents: vec![parent.to_owned()], ..Shard::default() });
                name
            })
            .collect()
    }

    /// Makes the next calls fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = KinesisError>) {
        self.state().faults.extend(errors);
    }

    /// How many ListShards calls were made.
    pub fn list_shards_calls(&self) -> u64 {
        self.state().list_shards_calls
    }

    /// How many GetRecords calls were made.
    pub fn get_records_calls(&self) -> u64 {
        self.state().get_records_calls
    }

    fn fault(state: &mut State) -> Result<(), KinesisError> {
        state.faults.pop_front().map_or(Ok(()), Err)
    }
}

fn parse_sequence(s: &str) -> Result<SequenceNumber, KinesisError> {
    SequenceNumber::parse(s).map_err(|e| KinesisError::Rejected(e.to_string()))
}

#[async_trait]
impl ShardSource for MemorySource {
    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut state = self.state();
        state.list_shards_calls += 1;
        Self::fault(&mut state)?;
        let shards = state.streams.get(stream).ok_or_else(|| KinesisError::NotFound(format!("stream {stream}")))?;
        Ok(shards
            .iter()
            .map(|(id, s)| ShardInfo { shard_id: id.clone(), parent_shard_ids: s.parents.clone(), closed: s.closed })
            .collect())
    }

    async fn shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        start: &IteratorStart,
    ) -> Result<String, KinesisError> {
        let mut state = self.state();
        Self::fault(&mut state)?;
        let shard = state
            .streams
            .get(stream)
            .and_then(|s| s.get(shard_id))
            .ok_or_else(|| KinesisError::NotFound(format!("shard {shard_id} of {stream}")))?;
        let seq = |r: &Record| parse_sequence(r.sequence_number());
        let index = match start {
            IteratorStart::TrimHorizon => 0,
            IteratorStart::Latest => shard.records.len(),
            IteratorStart::AtSequence(s) | IteratorStart::AfterSequence(s) => {
                let at = parse_sequence(s)?;
                let mut i = 0;
                while i < shard.records.len() && seq(&shard.records[i])? < at {
                    i += 1;
                }
                if matches!(start, IteratorStart::AfterSequence(_))
                    && i < shard.records.len()
                    && seq(&shard.records[i])? == at
                {
                    i += 1;
                }
                i
            }
            IteratorStart::AtTimestamp(ms) => shard
                .records
                .iter()
                .position(|r| r.approximate_arrival_timestamp().is_some_and(|t| t.to_millis().unwrap_or(0) >= *ms))
                .unwrap_or(shard.records.len()),
        };
        Ok(format!("{stream}/{shard_id}/{index}"))
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, KinesisError> {
        let mut state = self.state();
        state.get_records_calls += 1;
        Self::fault(&mut state)?;
        let (stream, shard_id, index) = Self::iterator_position(iterator)
            .ok_or_else(|| KinesisError::Rejected(format!("malformed iterator {iterator:?}")))?;
        let shard = state
            .streams
            .get(stream)
            .and_then(|s| s.get(shard_id))
            .ok_or_else(|| KinesisError::NotFound(format!("shard {shard_id} of {stream}")))?;
        let end = (index + limit.max(1) as usize).min(shard.records.len());
        let records = shard.records[index.min(end)..end].to_vec();
        let at_end = end >= shard.records.len();
        Ok(Page {
            next_iterator: (!(at_end && shard.closed)).then(|| format!("{stream}/{shard_id}/{end}")),
            millis_behind_latest: if at_end { 0 } else { 1_000 },
            records,
        })
    }

    async fn register_consumer(&self, _stream: &str, _name: &str, _wait: Duration) -> Result<String, KinesisError> {
        Err(KinesisError::Rejected("the in-memory source has no enhanced fan-out".into()))
    }

    async fn subscribe(
        &self,
        _consumer_arn: &str,
        _shard_id: &str,
        _start: &IteratorStart,
    ) -> Result<Subscription, KinesisError> {
        Err(KinesisError::Rejected("the in-memory source has no enhanced fan-out".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_in_order_resumes_after_a_sequence_and_ends_closed_shards() {
        let src = MemorySource::new();
        src.create_stream("s", 1);
        let seqs: Vec<String> = (0..5).map(|i| src.put("s", "shardId-000000000000", "k", &[i])).collect();
        let it = src.shard_iterator("s", "shardId-000000000000", &IteratorStart::TrimHorizon).await.unwrap();
        let page = src.get_records(&it, 3).await.unwrap();
        assert_eq!(page.records.len(), 3);
        assert_eq!(page.millis_behind_latest, 1_000);
        let after = IteratorStart::AfterSequence(seqs[1].clone());
        let it = src.shard_iterator("s", "shardId-000000000000", &after).await.unwrap();
        let page = src.get_records(&it, 10).await.unwrap();
        assert_eq!(page.records.iter().map(|r| r.data().as_ref()[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(page.next_iterator.is_some(), "open shard goes on");
        let children = src.reshard("s", "shardId-000000000000", 2);
        let page = src.get_records(page.next_iterator.as_deref().unwrap(), 10).await.unwrap();
        assert!(page.records.is_empty() && page.next_iterator.is_none(), "closed shard ends");
        let shards = src.list_shards("s").await.unwrap();
        assert_eq!(shards.len(), 3);
        assert!(shards[0].closed);
        assert_eq!(shards[1].parent_shard_ids, vec!["shardId-000000000000".to_string()]);
        assert_eq!(children, vec!["shardId-000000000001", "shardId-000000000002"]);
    }

    #[tokio::test]
    async fn generated_streams_from_a_spec() {
        let src = MemorySource::from_spec("a=3x2x16, b=2").unwrap();
        assert_eq!(src.list_shards("a").await.unwrap().len(), 3);
        assert_eq!(src.list_shards("b").await.unwrap().len(), 2);
        let it = src.shard_iterator("a", "shardId-000000000002", &IteratorStart::TrimHorizon).await.unwrap();
        let page = src.get_records(&it, 10).await.unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.records[1].data().as_ref(), b"shard-2-record-0000000001-");
        assert!(page.records[0].sequence_number() < page.records[1].sequence_number());
        for bad in ["a", "a=", "a=0", "=3", "a=1x2x3x4", "a=20000"] {
            assert!(MemorySource::from_spec(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn injected_faults_come_first() {
        let src = MemorySource::new();
        src.create_stream("s", 1);
        src.fail_next([KinesisError::Throttled("slow down".into())]);
        assert!(matches!(src.list_shards("s").await, Err(KinesisError::Throttled(_))));
        assert_eq!(src.list_shards("s").await.unwrap().len(), 1);
        assert!(matches!(src.list_shards("nope").await, Err(KinesisError::NotFound(_))));
    }
}
