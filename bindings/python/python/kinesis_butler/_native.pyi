"""Type stubs of kinesis_butler._native (implemented in Rust; use the package)."""

import datetime
import os
from typing import Any, Awaitable, Callable, Dict, Iterable, Iterator, List, Literal, Optional, TypedDict, Union, final

from typing_extensions import Self, disjoint_base

__all__ = ["Batch", "Consumer", "Record", "Shard", "check_record_shard", "quiesce"]

#: Seconds, or a timedelta.
_Duration = Union[float, int, datetime.timedelta]
#: PEM text, a file path (``str`` without a ``-----BEGIN`` line, or ``os.PathLike``), or the contents.
_Pem = Union[str, bytes, "os.PathLike[str]"]

@final
class Shard:
    """A shard as this consumer holds it (given to a handler object's hooks)."""

    @property
    def stream(self) -> str: ...
    @property
    def shard_id(self) -> str: ...
    @property
    def lease_epoch(self) -> int: ...
    @property
    def checkpoint(self) -> str:
        """The stored checkpoint reading started after (``""`` when there was none)."""

class _ShardStats(TypedDict):
    stream: str
    shard_id: str
    lease_epoch: int
    millis_behind_latest: int
    records_handled: int

class _Stats(TypedDict):
    """``Consumer.stats()``: counters since the consumer was made, and its shards now."""

    records_handled: int
    batches_handled: int
    checkpoints: int
    retries: int
    reconnects: int
    dead_lettered: int
    skipped: int
    bisect_steps: int
    handler_timeouts: int
    shards: List[_ShardStats]

#: ``on_failure`` as a callback: takes the given-up entries (dicts with app, stream,
#: shard_id, sequence_number, sub_sequence_number, partition_key, attempts, error,
#: reason, approximate_arrival_timestamp_ms, data), on a worker thread; returning means
#: accepted, raising makes the shard wait and call again.
_DeadLetterCallback = Callable[[List[Dict[str, Any]]], Any]

@final
class Record:
    """One Kinesis record."""

    @property
    def data(self) -> bytes: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def sequence_number(self) -> str:
        """A decimal string of up to 128 bits; compare as ``int(...)``."""
    @property
    def sub_sequence_number(self) -> int:
        """Position inside a KPL-aggregated record; 0 otherwise."""
    @property
    def approximate_arrival_timestamp(self) -> datetime.datetime:
        """When Kinesis received the record (aware, UTC)."""
    @property
    def approximate_arrival_timestamp_ms(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def shard_id(self) -> str: ...

@final
class Batch:
    """Records of one shard, in sequence order, following the shard's previous batch."""

    @property
    def stream(self) -> str: ...
    @property
    def shard_id(self) -> str: ...
    @property
    def lease_epoch(self) -> int: ...
    @property
    def records(self) -> List[Record]:
        """Never empty."""
    @property
    def millis_behind_latest(self) -> int: ...
    @property
    def attempt(self) -> int:
        """1 on the first delivery of this batch, then 2, 3… on retries."""
    def checkpoint(self, record: Optional[Record] = None) -> None:
        """Stores a checkpoint now, up to and including ``record`` (of this shard) or the
        whole batch; blocks until stored. Raises ``LeaseLostError`` when the shard moved,
        ``InvalidArgumentError`` for a record of another shard or one never delivered."""
    def checkpoint_async(self, record: Optional[Record] = None) -> Awaitable[None]:
        """``checkpoint`` for ``async def`` handlers."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Record]: ...

@disjoint_base
class Consumer:
    """Reads ``streams`` of ``app`` through the Kinesis Butler server at ``endpoint``
    (e.g. ``"http://127.0.0.1:50051"``; ``None``: ``$KINESIS_BUTLER_ENDPOINT``) and hands
    their records to a handler.

    Options (``None`` keeps the default):

    - ``client_name``: shown by ``kinesis-butler leases`` (default ``python-<pid>``).
    - ``auth_token``: sent as ``authorization: Bearer <token>`` (servers started with
      ``--auth-token``); default ``$KINESIS_BUTLER_TOKEN``.
    - ``tls_ca_certificate_pem``, ``tls_domain_name``, ``tls_client_certificate_pem``,
      ``tls_client_key_pem``: TLS settings for an ``https://`` endpoint, each PEM text,
      a file path or ``bytes``; without them the system's roots verify the server.
    - ``start``: where shards without a checkpoint start: ``"trim_horizon"`` (default),
      ``"latest"`` or a ``datetime``.
    - ``max_records_per_batch``: 1..10000 (default: the server's).
    - ``checkpoint``: ``"batch"`` (after every handled batch, default) or ``"manual"``
      (``batch.checkpoint()``); or ``checkpoint_every_records`` / ``checkpoint_interval``.
      Whatever the policy, handled progress is checkpointed when a shard moves and on stop.
    - ``max_concurrent_handlers`` (64), ``shard_queue_batches`` (4).
    - ``handler_retries`` (3), ``retry_initial_delay`` (0.1 s), ``retry_max_delay`` (5 s),
      ``on_failure``: ``"stop"`` (default: ``run`` raises ``HandlerError``), ``"skip"``,
      a dead-letter destination ``"kinesis:STREAM"`` / ``"file:PATH"`` (JSON lines) or a
      callable (see ``_DeadLetterCallback``); ``max_attempts`` (default
      ``handler_retries + 1``), ``max_record_age``, ``bisect_on_error``; raise (or
      return) ``RecordFailed(record, cause)`` to name the first failed record.
    - ``parallelization_factor``: 1..10 lanes per shard by partition key (default 1).
    - ``handler_timeout``: a call taking longer is cancelled (an ``async def``'s task is
      cancelled; a plain function is awaited, with a warning) and retried; default none.
    - ``reconnect_initial_delay`` (0.2 s), ``reconnect_max_delay`` (10 s),
      ``max_reconnect_attempts``: consecutive failed connections before ``run`` raises
      ``ButlerConnectionError`` (default: retry forever); ``max_initial_connect_attempts`` (6):
      failed attempts to open the first session before ``run`` raises ``ButlerConnectionError``,
      so that a wrong endpoint fails in seconds.
    - ``request_timeout`` (10 s), ``shutdown_timeout`` (30 s: how long batches in hand
      may take to finish on stop).

    Raises ``InvalidArgumentError`` (a ``ValueError``) or ``TypeError`` for bad arguments.
    """

    def __new__(
        cls,
        endpoint: Optional[str],
        app: str,
        streams: Union[str, Iterable[str]],
        *,
        client_name: Optional[str] = None,
        auth_token: Optional[str] = None,
        tls_ca_certificate_pem: Optional[_Pem] = None,
        tls_domain_name: Optional[str] = None,
        tls_client_certificate_pem: Optional[_Pem] = None,
        tls_client_key_pem: Optional[_Pem] = None,
        start: Union[Literal["trim_horizon", "latest"], datetime.datetime, None] = None,
        max_records_per_batch: Optional[int] = None,
        checkpoint: Optional[Literal["batch", "manual"]] = None,
        checkpoint_every_records: Optional[int] = None,
        checkpoint_interval: Optional[_Duration] = None,
        max_concurrent_handlers: Optional[int] = None,
        shard_queue_batches: Optional[int] = None,
        handler_retries: Optional[int] = None,
        retry_initial_delay: Optional[_Duration] = None,
        retry_max_delay: Optional[_Duration] = None,
        on_failure: Union[str, _DeadLetterCallback, None] = None,
        handler_timeout: Optional[_Duration] = None,
        reconnect_initial_delay: Optional[_Duration] = None,
        reconnect_max_delay: Optional[_Duration] = None,
        max_reconnect_attempts: Optional[int] = None,
        max_initial_connect_attempts: Optional[int] = None,
        request_timeout: Optional[_Duration] = None,
        shutdown_timeout: Optional[_Duration] = None,
        max_attempts: Optional[int] = None,
        max_record_age: Optional[_Duration] = None,
        bisect_on_error: Optional[bool] = None,
        parallelization_factor: Optional[int] = None,
    ) -> Self: ...
    def stats(self) -> _Stats:
        """Counters and per-shard lag now."""
    @property
    def endpoint(self) -> str: ...
    @property
    def app(self) -> str: ...
    @property
    def streams(self) -> List[str]: ...
    @property
    def stopped(self) -> bool: ...
    def stop(self) -> None:
        """Stops gracefully; safe from any thread and from inside a handler."""
    def _run_blocking(self, handler: Any) -> None: ...
    def _run_async(self, handler: Any) -> "Awaitable[None]": ...

def quiesce(timeout: float = 2.0) -> bool:
    """Waits until no Rust thread is in a Python call (registered with ``atexit``)."""

def check_record_shard(batch_stream: str, batch_shard_id: str, record_stream: str, record_shard_id: str) -> None:
    """The client's rule that a batch checkpoints only records of its own shard: raises
    ``InvalidArgumentError`` (as a real ``Batch.checkpoint`` does) when the record's
    shard or stream is not the batch's."""
