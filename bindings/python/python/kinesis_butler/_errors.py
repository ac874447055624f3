"""Exceptions raised by kinesis_butler. The native module raises these classes."""

from __future__ import annotations

import builtins

__all__ = [
    "ButlerError",
    "ConnectionError",
    "LeaseLostError",
    "HandlerError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnauthenticatedError",
    "StoppedError",
    "ServerError",
    "RecordFailed",
]


class ButlerError(Exception):
    """Base class of every error of kinesis_butler. ``kind`` names the category."""

    kind: str = "butler"


class ConnectionError(ButlerError, builtins.ConnectionError):  # noqa: A001 - a builtins.ConnectionError too
    """The server could not be reached, or the connection broke (after the retries the
    options allow). Also a ``builtins.ConnectionError``."""

    kind = "connection"
    endpoint: str = ""


class LeaseLostError(ButlerError):
    """The shard is no longer held by this consumer at its lease epoch (it moved to
    another consumer): its checkpoints fail."""

    kind = "lease_lost"
    stream: str = ""
    shard_id: str = ""
    lease_epoch: int = 0


class HandlerError(ButlerError):
    """The handler failed on a batch after every retry; ``__cause__`` is the exception
    the handler raised last."""

    kind = "handler"
    stream: str = ""
    shard_id: str = ""
    attempts: int = 0


class InvalidArgumentError(ButlerError, ValueError):
    """A setting or argument is invalid (also a ``ValueError``)."""

    kind = "invalid_argument"


class NotFoundError(ButlerError, LookupError):
    """A stream does not exist (also a ``LookupError``)."""

    kind = "not_found"


class UnauthenticatedError(ButlerError, PermissionError):
    """The server refused the credentials (``auth_token`` or client certificate); also a
    ``PermissionError``."""

    kind = "unauthenticated"


class StoppedError(ButlerError):
    """The consumer was stopped while the operation waited."""

    kind = "stopped"


class ServerError(ButlerError):
    """Any other answer of the server; ``code`` is the gRPC status code name."""

    kind = "server"
    code: str = ""


class RecordFailed(ButlerError):
    """Raise (or return) this from a handler to say which record failed first: the
    records before it count as handled, the checkpoint moves right before it, and the
    retry starts at it (``max_attempts``, then ``on_failure``). ``__cause__`` / ``cause``
    is the original error."""

    kind = "record_failed"

    def __init__(self, record, cause=None):
        super().__init__(f"record {getattr(record, 'sequence_number', '?')} failed: {cause!r}")
        self.record = record
        self.cause = cause
        if isinstance(cause, BaseException):
            self.__cause__ = cause
