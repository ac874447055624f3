"""Exceptions raised by kinesis_butler. The native module raises these classes.

Every error has the same three attributes in Python and in Node: ``code`` (the client's
stable kind: ``"connection"``, ``"lease_lost"``, ``"handler"``, ``"invalid_argument"``,
``"not_found"``, ``"unauthenticated"``, ``"stopped"``, ``"server"``), ``grpc_code`` (the
gRPC status name behind it, such as ``"UNAVAILABLE"``, or ``None``) and ``retryable``
(whether trying again later may succeed).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "ButlerError",
    "ButlerConnectionError",
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
    """Base class of every error of kinesis_butler."""

    #: The client's stable kind (the same strings as Node's ``code``).
    code: str = "butler"
    #: The gRPC status code name behind the error, when there is one.
    grpc_code: Optional[str] = None
    #: Whether trying the same operation again later may succeed.
    retryable: bool = False

    @property
    def kind(self) -> str:
        """``code`` (kept for earlier versions)."""
        return self.code


class ButlerConnectionError(ButlerError, ConnectionError):
    """The server could not be reached, or the connection broke (after the retries the
    options allow). Also a built-in ``ConnectionError``."""

    code = "connection"
    retryable = True
    endpoint: str = ""


class LeaseLostError(ButlerError):
    """The shard is no longer held by this consumer at its lease epoch (it moved to
    another consumer): its checkpoints fail."""

    code = "lease_lost"
    stream: str = ""
    shard_id: str = ""
    lease_epoch: int = 0


class HandlerError(ButlerError):
    """The handler failed on a batch after every retry; ``__cause__`` is the exception
    the handler raised last."""

    code = "handler"
    stream: str = ""
    shard_id: str = ""
    attempts: int = 0


class InvalidArgumentError(ButlerError, ValueError):
    """A setting or argument is invalid (also a ``ValueError``), including a checkpoint
    at a record of another shard or one never delivered."""

    code = "invalid_argument"
    grpc_code = "INVALID_ARGUMENT"


class NotFoundError(ButlerError, LookupError):
    """A stream does not exist (also a ``LookupError``)."""

    code = "not_found"
    grpc_code = "NOT_FOUND"


class UnauthenticatedError(ButlerError, PermissionError):
    """The server refused the credentials (``auth_token`` or client certificate); also a
    ``PermissionError``."""

    code = "unauthenticated"
    grpc_code = "UNAUTHENTICATED"


class StoppedError(ButlerError):
    """The consumer was stopped: while the operation waited, or before ``run()``."""

    code = "stopped"


class ServerError(ButlerError):
    """Any other answer of the server; ``grpc_code`` names its status."""

    code = "server"


#: The earlier name of ``ButlerConnectionError``. Not in ``__all__``: a star import
#: must not shadow the built-in ``ConnectionError``.
ConnectionError = ButlerConnectionError  # noqa: A001


class RecordFailed(ButlerError):
    """Raise (or return) this from a handler to say which record failed first: the
    records before it count as handled, the checkpoint moves right before it, and the
    retry starts at it (``max_attempts``, then ``on_failure``). ``__cause__`` / ``cause``
    is the original error."""

    code = "record_failed"

    def __init__(self, record, cause=None):
        super().__init__(f"record {getattr(record, 'sequence_number', '?')} failed: {cause!r}")
        self.record = record
        self.cause = cause
        if isinstance(cause, BaseException):
            self.__cause__ = cause
