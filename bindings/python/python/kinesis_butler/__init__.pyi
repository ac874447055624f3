"""Type stubs of kinesis_butler (the classes are implemented in Rust)."""

from typing import Any, Awaitable, Callable, Union

from . import _native
from ._native import Batch as Batch
from ._native import Record as Record

from ._errors import ButlerError as ButlerError
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

_Handler = Union[Callable[[Batch], Any], Callable[[Batch], Awaitable[Any]]]

class Consumer(_native.Consumer):
    def run(self, handler: _Handler) -> None:
        """Runs ``handler`` (a function or an ``async def``) on every batch until stopped.
        Returns after ``stop()`` or Ctrl-C once batches in hand are checkpointed."""
    async def run_async(self, handler: _Handler) -> None:
        """``run`` inside a running asyncio loop; cancelling stops gracefully."""

__all__ = [
    "Consumer",
    "Batch",
    "Record",
    "ButlerError",
    "ConnectionError",
    "HandlerError",
    "InvalidArgumentError",
    "LeaseLostError",
    "NotFoundError",
    "RecordFailed",
    "ServerError",
    "StoppedError",
    "UnauthenticatedError",
]
