"""Consume Amazon Kinesis through a Kinesis Butler server.

The server owns shard discovery, leases, balancing, failover and checkpoints storage;
this package runs your handler on every batch of records and checkpoints for it::

    from kinesis_butler import Consumer

    def handle(batch):
        for record in batch.records:
            print(batch.shard_id, record.sequence_number, record.data)

    Consumer("http://127.0.0.1:50051", "my-app", ["orders"]).run(handle)

``run`` also takes an ``async def`` handler (run on an asyncio loop); inside a running
loop use ``await consumer.run_async(handler)``. Batches of one shard reach the handler one
at a time, in order; shards run concurrently. A handler that raises is retried; the
checkpoint moves only past batches it handled. Ctrl-C stops gracefully with a final
checkpoint. The protocol, retries and checkpoints are implemented once, in Rust (crate
``kinesis-butler-client``); this package adapts them to Python.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import signal
import threading
from typing import Any

from . import _native
from ._errors import (
    ButlerError,
    ConnectionError,
    HandlerError,
    InvalidArgumentError,
    LeaseLostError,
    NotFoundError,
    RecordFailed,
    ServerError,
    StoppedError,
    UnauthenticatedError,
)
from ._native import Batch, Record

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

__version__ = "0.1.0"

# Rust threads still handing results to Python must be done before the interpreter exits.
atexit.register(_native.quiesce)


def _is_async(handler: Any) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(type(handler), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def _check_handler(handler: Any) -> None:
    if not callable(handler):
        raise TypeError(
            "handler must be callable (a function or an async def taking a Batch), "
            f"not {type(handler).__name__}"
        )


class Consumer(_native.Consumer):
    """Reads ``streams`` of ``app`` through the Kinesis Butler server at ``endpoint`` and
    hands their records to a handler, checkpointing for it. The options are described in
    ``_native.pyi``."""

    def run(self, handler: Any) -> None:
        """Runs ``handler`` on every batch until the consumer stops.

        ``handler`` is a function taking a ``Batch`` (run on worker threads, the GIL
        released meanwhile) or an ``async def`` (run on a new asyncio loop in this thread).
        Returns after ``stop()`` or Ctrl-C, once the batches in hand are handled and
        checkpointed; a second Ctrl-C gives up at once (``KeyboardInterrupt``). Raises
        ``HandlerError`` when the handler failed every retry, ``NotFoundError`` for a
        stream that does not exist, ``ConnectionError`` when the server cannot be reached
        ``max_reconnect_attempts`` times in a row.
        """
        _check_handler(handler)
        if _is_async(handler):
            self._run_in_new_loop(handler)
        else:
            self._run_blocking(handler)

    async def run_async(self, handler: Any) -> None:
        """Runs ``handler`` (an ``async def``, or a function run on worker threads) inside
        the running asyncio loop until the consumer stops.

        Cancelling the awaiting task stops the consumer gracefully (batches in hand finish
        and are checkpointed) before ``CancelledError`` propagates; a second cancellation
        gives up at once.
        """
        _check_handler(handler)
        run = self._run_async(handler)
        try:
            await asyncio.shield(run)
        except asyncio.CancelledError:
            if run.done():
                raise
            self.stop()
            await run  # cancelling this wait cancels the run itself: it stops at once
            raise

    def _run_in_new_loop(self, handler: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Consumer.run() cannot start an event loop inside a running one: "
                "use `await consumer.run_async(handler)`"
            )
        interrupted = []

        async def main() -> None:
            loop = asyncio.get_running_loop()
            run = self._run_async(handler)

            def on_sigint() -> None:
                if self.stopped:
                    interrupted.append(True)
                    run.cancel()  # second Ctrl-C: give up at once
                else:
                    self.stop()

            installed = False
            if threading.current_thread() is threading.main_thread():
                try:
                    loop.add_signal_handler(signal.SIGINT, on_sigint)
                    installed = True
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
            try:
                await run
            finally:
                if installed:
                    loop.remove_signal_handler(signal.SIGINT)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
