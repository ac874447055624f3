"""Type stubs of kinesis_butler (the classes are implemented in Rust)."""

from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Literal, Protocol, Union, type_check_only

from . import _native
from ._native import Batch as Batch
from ._native import Record as Record
from ._native import Shard as Shard

from ._errors import ButlerError as ButlerError
from ._errors import ButlerConnectionError as ButlerConnectionError
from ._errors import ConnectionError as ConnectionError
from ._errors import HandlerError as HandlerError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import LeaseLostError as LeaseLostError
from ._errors import NotFoundError as NotFoundError
from ._errors import RecordFailed as RecordFailed
from ._errors import ServerError as ServerError
from ._errors import StoppedError as StoppedError
from ._errors import UnauthenticatedError as UnauthenticatedError

__version__: str

#: Why a consumer stopped working on a shard (the ``reason`` of ``shard_stopped``).
StopReason = Literal[
    "rebalanced",
    "server_shutdown",
    "lease_lost",
    "ended",
    "released",
    "consumer_stopped",
    "disconnected",
    "handler_failed",
]

_Function = Union[Callable[[Batch], Any], Callable[[Batch], Awaitable[Any]]]

@type_check_only
class _HandlerObject(Protocol):
    """An object with a ``handle(batch)`` method (plain or ``async``) and, optionally,
    ``shard_started(shard)`` / ``shard_stopped(shard, reason)`` hooks."""

    def handle(self, batch: Batch) -> Any: ...

_Handler = Union[_Function, _HandlerObject]

class Consumer(_native.Consumer):
    def run(self, handler: _Handler, *, handle_signals: bool = True) -> None:
        """Runs ``handler`` (a function, an ``async def`` or a handler object) on every
        batch until stopped. Returns after ``stop()``, Ctrl-C or SIGTERM once batches in
        hand are checkpointed; ``StoppedError`` if the consumer was stopped before."""
    async def run_async(self, handler: _Handler) -> None:
        """``run`` inside a running asyncio loop; cancelling stops gracefully."""
    def __enter__(self) -> "Consumer": ...
    def __exit__(self, *exc_info: object) -> None: ...
    async def __aenter__(self) -> "Consumer": ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[Batch]:
        """``async for batch in consumer``: a batch is checkpointed once the body is done."""
    def __iter__(self) -> Iterator[Batch]:
        """``for batch in consumer``: the consumer runs on a background thread."""

__all__ = [
    "Consumer",
    "Batch",
    "Record",
    "Shard",
    "ButlerError",
    "ButlerConnectionError",
    "HandlerError",
    "InvalidArgumentError",
    "LeaseLostError",
    "NotFoundError",
    "RecordFailed",
    "ServerError",
    "StoppedError",
    "UnauthenticatedError",
]
