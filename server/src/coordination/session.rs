//! A session: one open `GetRecords` stream and what it asked for.

use kinesis_butler_proto as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::retrieval::kinesis::IteratorStart;

/// Where a session's events go: bounded, so readers wait for a slow client.
pub(crate) type Outbox = mpsc::Sender<Result<pb::GetRecordsResponse, tonic::Status>>;

/// One client connection reading one or more streams for an app.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique id, given to the client in `SessionStarted`.
    pub id: String,
    /// App (consumer group).
    pub app: String,
    /// Streams read.
    pub streams: Vec<String>,
    /// The client's self-given name.
    pub client_name: String,
    /// Start position for shards without a checkpoint.
    pub start: IteratorStart,
    /// Records per batch.
    pub batch_size: u32,
    /// The session's bounded event queue.
    pub out: Outbox,
    /// Cancelled when the server ends the session; ends its event stream.
    pub closed: CancellationToken,
}
