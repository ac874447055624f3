"""Consume Amazon Kinesis through a Kinesis Butler server.

The server owns shard discovery, leases, balancing, failover and checkpoints storage;
this package runs your handler on every batch of records and checkpoints for it::

    from kinesis_butler import Consumer

    def handle(batch):
        for record in batch.records:
            print(batch.shard_id, record.sequence_number, record.data)

    Consumer("http://127.0.0.1:50051", "my-app", ["orders"]).run(handle)

``run`` also takes an ``async def`` handler (run on an asyncio loop); inside a running
loop use ``await consumer.run_async(handler)``, or iterate: ``async for batch in
consumer`` (the batch is checkpointed once the loop body is done with it) or ``for batch
in consumer``. A handler object may also have ``shard_started(shard)`` and
``shard_stopped(shard, reason)`` methods, awaited before a shard's final checkpoint and
release. Batches of one shard reach the handler one at a time, in order; shards run
concurrently. A handler that raises is retried; the checkpoint moves only past batches it
handled. Ctrl-C and SIGTERM stop ``run()`` gracefully with a final checkpoint.
``kinesis_butler.testing`` builds batches for a handler's unit tests. The protocol, retries and checkpoints are implemented once, in Rust (crate
``kinesis-butler-client``); this package adapts them to Python.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import queue
import signal
import threading
from typing import Any, AsyncIterator, Iterator, List, Literal, Optional, Tuple

from . import _native
from ._errors import (
    ButlerConnectionError,
    ButlerError,
    HandlerError,
    InvalidArgumentError,
    LeaseLostError,
    NotFoundError,
    RecordFailed,
    ServerError,
    StoppedError,
    UnauthenticatedError,
)
from ._errors import ConnectionError  # noqa: A004 - the earlier name, not in __all__
from ._native import Batch, Record, Shard

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

__version__ = "0.1.0"

#: Why a consumer stopped working on a shard (the ``reason`` of ``shard_stopped``; the
#: client's stable names, the same in Node).
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

# Rust threads still handing results to Python must be done before the interpreter exits.
atexit.register(_native.quiesce)

#: The signals ``run()`` turns into a graceful stop (a second one gives up at once).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handle_callable(handler: Any) -> Any:
    """What is called with each batch: the handler, or its ``handle`` method."""
    if callable(handler):
        return handler
    handle = getattr(handler, "handle", None)
    if callable(handle):
        return handle
    raise TypeError(
        "handler must be callable (a function or an async def taking a Batch) "
        f"or an object with a handle(batch) method, not {type(handler).__name__}"
    )


def _is_async(handler: Any) -> bool:
    handle = _handle_callable(handler)
    if inspect.iscoroutinefunction(handle):
        return True
    call = getattr(type(handle), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


class Consumer(_native.Consumer):
    """Reads ``streams`` of ``app`` through the Kinesis Butler server at ``endpoint``
    (``None``: ``$KINESIS_BUTLER_ENDPOINT``) and hands their records to a handler,
    checkpointing for it. The options are described in ``_native.pyi``.

    Also a context manager (``with`` / ``async with``: the consumer is stopped on exit)
    and an iterable of batches (``for`` / ``async for``)."""

    def run(self, handler: Any, *, handle_signals: bool = True) -> None:
        """Runs ``handler`` on every batch until the consumer stops.

        ``handler`` is a function taking a ``Batch`` (run on worker threads, the GIL
        released meanwhile), an ``async def`` (run on a new asyncio loop in this thread),
        or an object with such a ``__call__`` or ``handle`` method and, optionally,
        ``shard_started(shard)`` / ``shard_stopped(shard, reason)`` hooks. Returns after
        ``stop()``, Ctrl-C or SIGTERM, once the batches in hand are handled and
        checkpointed; a second signal gives up at once (``KeyboardInterrupt``).
        ``handle_signals=False`` leaves SIGTERM (and, for an ``async def``, SIGINT) to
        the program. Raises
        ``HandlerError`` when the handler failed every retry, ``NotFoundError`` for a
        stream that does not exist, ``ButlerConnectionError`` when the server cannot be
        reached ``max_reconnect_attempts`` times in a row, ``StoppedError`` when the
        consumer was stopped before.
        """
        _handle_callable(handler)
        if _is_async(handler):
            self._run_in_new_loop(handler, handle_signals)
        else:
            with _stop_on_sigterm(self, handle_signals):
                self._run_blocking(handler)

    async def run_async(self, handler: Any) -> None:
        """Runs ``handler`` (an ``async def``, a function run on worker threads, or a
        handler object) inside the running asyncio loop until the consumer stops.

        Cancelling the awaiting task stops the consumer gracefully (batches in hand finish
        and are checkpointed) before ``CancelledError`` propagates; a second cancellation
        gives up at once.
        """
        _handle_callable(handler)
        run = self._run_async(handler)
        try:
            await asyncio.shield(run)
        except asyncio.CancelledError:
            if run.done():
                raise
            self.stop()
            await run  # cancelling this wait cancels the run itself: it stops at once
            raise

    # --- context managers --------------------------------------------------------

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "Consumer":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        iteration = getattr(self, "_iteration", None)
        if iteration is not None and not iteration.done():
            try:
                await iteration
            except BaseException:  # reported by the loop that consumed it
                pass

    # --- iteration ---------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Batch]:
        """``async for batch in consumer``: each batch is checkpointed (by the
        checkpoint policy) once the loop body is done with it and asks for the next one.
        Batches of different shards arrive interleaved, one at a time. Leaving the loop
        (``break``, an exception) stops the consumer; the batch in hand then counts as
        not handled."""
        return self._batches()

    async def _batches(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        handed: "asyncio.Queue[Optional[Tuple[Batch, asyncio.Future[None]]]]" = asyncio.Queue()

        async def handler(batch: Batch) -> None:
            done: "asyncio.Future[None]" = loop.create_future()
            await handed.put((batch, done))
            await done

        run = asyncio.ensure_future(self.run_async(handler))
        self._iteration = run
        run.add_done_callback(lambda _: handed.put_nowait(None))
        current: "Optional[asyncio.Future[None]]" = None
        try:
            while True:
                item = await handed.get()
                if item is None:
                    break
                batch, current = item
                yield batch
                if not current.done():
                    current.set_result(None)
                current = None
            await run
        finally:
            if not run.done():
                self.stop()
                pending = [current] if current is not None else []
                while not handed.empty():
                    item = handed.get_nowait()
                    if item is not None:
                        pending.append(item[1])
                for done in pending:
                    if not done.done():
                        done.set_exception(StoppedError("the loop over the consumer ended before this batch"))
                try:
                    await run
                except ButlerError:
                    pass

    def __iter__(self) -> Iterator[Batch]:
        """``for batch in consumer``: as ``async for``, for code without asyncio. The
        consumer runs on a background thread; each batch is checkpointed once the loop
        body asks for the next one. SIGTERM stops it gracefully (in the main thread)."""
        return self._batches_blocking()

    def _batches_blocking(self) -> Iterator[Batch]:
        handed: "queue.Queue[Optional[Tuple[Batch, threading.Event, List[BaseException]]]]" = queue.Queue()

        def handler(batch: Batch) -> None:
            done, failed = threading.Event(), []  # type: Tuple[threading.Event, List[BaseException]]
            handed.put((batch, done, failed))
            done.wait()
            if failed:
                raise failed[0]

        outcome: List[BaseException] = []

        def runner() -> None:
            try:
                self._run_blocking(handler)
            except BaseException as error:  # handed to the iterating thread
                outcome.append(error)
            finally:
                handed.put(None)

        thread = threading.Thread(target=runner, name="kinesis-butler-run", daemon=True)
        current: Optional[Tuple[threading.Event, List[BaseException]]] = None
        with _stop_on_sigterm(self, True):
            thread.start()
            try:
                while True:
                    item = handed.get()
                    if item is None:
                        break
                    batch, done, failed = item
                    current = (done, failed)
                    yield batch
                    done.set()
                    current = None
                thread.join()
                if outcome:
                    raise outcome[0]
            finally:
                if thread.is_alive():
                    self.stop()
                    stopped = StoppedError("the loop over the consumer ended before this batch")
                    waiting = [current] if current is not None else []
                    # The runner always ends the queue with None.
                    while True:
                        for done, failed in waiting:
                            failed.append(stopped)
                            done.set()
                        item = handed.get()
                        if item is None:
                            break
                        waiting = [(item[1], item[2])]
                    thread.join()

    # --- signals -----------------------------------------------------------------

    def _run_in_new_loop(self, handler: Any, handle_signals: bool = True) -> None:
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

            def on_signal() -> None:
                if self.stopped:
                    interrupted.append(True)
                    run.cancel()  # second signal: give up at once
                else:
                    self.stop()

            installed = []
            if handle_signals and threading.current_thread() is threading.main_thread():
                for signum in _STOP_SIGNALS:
                    try:
                        loop.add_signal_handler(signum, on_signal)
                        installed.append(signum)
                    except (NotImplementedError, RuntimeError, ValueError):
                        pass
            try:
                await run
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise


class _stop_on_sigterm:
    """While active (in the main thread), SIGTERM stops ``consumer`` gracefully like
    Ctrl-C does; a second SIGTERM gives up at once (``KeyboardInterrupt``). Ctrl-C is
    left to Python's own handler, which the native run loop turns into a stop."""

    def __init__(self, consumer: Consumer, enabled: bool) -> None:
        self.consumer = consumer
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.consumer.stopped:
            raise KeyboardInterrupt("second SIGTERM: giving up at once")
        self.consumer.stop()

    def __enter__(self) -> None:
        if self.enabled:
            try:
                self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            except (ValueError, OSError):
                self.enabled = False

    def __exit__(self, *exc_info: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
