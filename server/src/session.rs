//! A session: one open `GetRecords` stream and what it asked for.

use tokio_util::sync::CancellationToken;

use crate::kinesis::IteratorStart;
use crate::reader::Outbox;

/// One client connection reading one or more streams for an app.
#[derive(Debug)]
pub struct Session {
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
