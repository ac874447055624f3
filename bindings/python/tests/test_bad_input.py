"""Bad input gets a clear exception: never a crash, never a hang."""

import asyncio
import datetime
import time

import pytest

import kinesis_butler
from kinesis_butler import ButlerError, Consumer, InvalidArgumentError, NotFoundError
from support import free_port, run_bounded, unique

ENDPOINT = "http://127.0.0.1:50051"


@pytest.mark.parametrize(
    "args, kwargs, error, text",
    [
        ((ENDPOINT, "app", []), {}, InvalidArgumentError, "name at least one stream"),
        ((ENDPOINT, "app", ["a", "a"]), {}, InvalidArgumentError, "named twice"),
        ((ENDPOINT, "app", [""]), {}, InvalidArgumentError, "must not be empty"),
        ((ENDPOINT, "", ["s"]), {}, InvalidArgumentError, "app must not be empty"),
        (("not a url", "app", ["s"]), {}, InvalidArgumentError, "invalid endpoint"),
        (("127.0.0.1:50051", "app", ["s"]), {}, InvalidArgumentError, "http:// or https://"),
        ((ENDPOINT, "app", ["s"]), {"max_initial_connect_attempts": 0}, InvalidArgumentError, "max_initial_connect_attempts"),
        ((ENDPOINT, "app", 42), {}, TypeError, "streams must be"),
        ((ENDPOINT, "app", [1, 2]), {}, TypeError, "stream names must be str"),
        ((42, "app", ["s"]), {}, TypeError, ""),
        ((ENDPOINT, None, ["s"]), {}, TypeError, ""),
        ((ENDPOINT, "app", ["s"]), {"max_records_per_batch": 10_001}, InvalidArgumentError, "max_records_per_batch"),
        ((ENDPOINT, "app", ["s"]), {"max_records_per_batch": "10"}, TypeError, "must be an int"),
        ((ENDPOINT, "app", ["s"]), {"max_concurrent_handlers": 0}, InvalidArgumentError, "max_concurrent_handlers"),
        ((ENDPOINT, "app", ["s"]), {"handler_retries": -1}, InvalidArgumentError, "handler_retries"),
        ((ENDPOINT, "app", ["s"]), {"handler_timeout": -1}, InvalidArgumentError, "handler_timeout"),
        ((ENDPOINT, "app", ["s"]), {"handler_timeout": "1s"}, TypeError, "seconds"),
        ((ENDPOINT, "app", ["s"]), {"checkpoint": "sometimes"}, InvalidArgumentError, "checkpoint"),
        ((ENDPOINT, "app", ["s"]), {"checkpoint_every_records": 0}, InvalidArgumentError, "checkpoint_every_records"),
        (
            (ENDPOINT, "app", ["s"]),
            {"checkpoint_every_records": 5, "checkpoint_interval": 1},
            InvalidArgumentError,
            "not both",
        ),
        ((ENDPOINT, "app", ["s"]), {"checkpoint": "manual", "checkpoint_interval": 1}, InvalidArgumentError, "manual"),
        ((ENDPOINT, "app", ["s"]), {"on_failure": "ignore"}, InvalidArgumentError, "on_failure"),
        ((ENDPOINT, "app", ["s"]), {"start": "beginning"}, InvalidArgumentError, "start"),
        ((ENDPOINT, "app", ["s"]), {"start": 12}, TypeError, "start"),
        ((ENDPOINT, "app", ["s"]), {"retry_initial_delay": 2, "retry_max_delay": 1}, InvalidArgumentError, "retry"),
        ((ENDPOINT, "app", ["s"]), {"no_such_option": 1}, TypeError, "no_such_option"),
    ],
)
def test_bad_arguments_raise_at_construction(args, kwargs, error, text):
    with pytest.raises(error) as raised:
        Consumer(*args, **kwargs)
    assert text in str(raised.value)
    if error is InvalidArgumentError:
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, ButlerError)
        assert raised.value.kind == "invalid_argument"


def test_good_options_are_accepted():
    c = Consumer(
        ENDPOINT,
        "app",
        "one-stream",
        client_name="me",
        start=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        max_records_per_batch=100,
        checkpoint_interval=datetime.timedelta(seconds=2),
        max_concurrent_handlers=4,
        shard_queue_batches=2,
        handler_retries=0,
        on_failure="skip",
        handler_timeout=1.5,
        max_reconnect_attempts=3,
        request_timeout=5,
        shutdown_timeout=0,
    )
    assert c.streams == ["one-stream"] and c.app == "app" and c.endpoint == ENDPOINT and not c.stopped
    Consumer(ENDPOINT, "app", ("a", "b"), start="latest", checkpoint="manual")


@pytest.mark.parametrize("handler", [None, 42, "handle", object()])
def test_a_handler_that_is_not_callable_is_refused(handler):
    c = Consumer(ENDPOINT, "app", ["s"])
    with pytest.raises(TypeError, match="handler must be callable"):
        c.run(handler)

    async def main():
        await c.run_async(handler)

    with pytest.raises(TypeError, match="handler must be callable"):
        asyncio.run(main())


def test_an_unreachable_server_raises_connection_error(caplog):
    c = Consumer(
        f"http://127.0.0.1:{free_port()}",
        "app",
        ["s"],
        max_reconnect_attempts=3,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
    )
    started = time.monotonic()
    with pytest.raises(kinesis_butler.ConnectionError) as raised:
        c.run(lambda batch: None)
    assert time.monotonic() - started < 10
    assert isinstance(raised.value, ConnectionError), "also the built-in ConnectionError"
    assert raised.value.kind == "connection" and "cannot reach" in str(raised.value)
    # The client's warnings go to the `kinesis_butler` logger.
    warnings = [r for r in caplog.records if r.name == "kinesis_butler" and r.levelname == "WARNING"]
    assert any("cannot open a session" in r.getMessage() for r in warnings), caplog.text


def test_a_stream_that_does_not_exist_raises_not_found(server):
    c = Consumer(server.endpoint, unique("app"), [unique("missing")], max_reconnect_attempts=3)
    with pytest.raises(NotFoundError) as raised:
        run_bounded(c, lambda batch: None, 30)
    assert raised.value.kind == "not_found"


def test_a_handler_returning_a_coroutine_from_a_plain_function_fails_clearly(server, make_stream, caplog):
    stream = make_stream(1)
    stream.put_records(3)

    async def work(batch):
        pass

    c = Consumer(server.endpoint, unique("app"), [stream.name], handler_retries=0)
    with pytest.raises(kinesis_butler.HandlerError) as raised:
        run_bounded(c, lambda batch: work(batch), 30)
    assert isinstance(raised.value.__cause__, TypeError)
    assert "async def" in str(raised.value.__cause__)
    # Each failure is logged with its traceback.
    failures = [r for r in caplog.records if r.name == "kinesis_butler" and r.exc_info]
    assert failures and "the handler raised" in failures[0].getMessage()


def test_run_twice_at_once_is_refused(server, make_stream):
    stream = make_stream(1)
    stream.put_records(1)
    c = Consumer(server.endpoint, unique("app"), [stream.name])
    errors = []

    def handle(batch):
        try:
            c.run(lambda b: None)
        except InvalidArgumentError as e:
            errors.append(e)
        c.stop()

    run_bounded(c, handle, 30)
    assert errors and "already running" in str(errors[0])


def test_run_async_needs_a_running_loop():
    c = Consumer(ENDPOINT, "app", ["s"])
    with pytest.raises(RuntimeError):
        c._run_async(lambda b: None)


def test_run_with_an_async_handler_inside_a_running_loop_points_to_run_async():
    c = Consumer(ENDPOINT, "app", ["s"])

    async def handle(batch):
        pass

    async def main():
        with pytest.raises(RuntimeError, match="run_async"):
            c.run(handle)

    asyncio.run(main())
