"""The one place where exceptions become gRPC status codes (DESIGN §5), and the servicer boundary."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from shared.errors import InvalidArgumentError, LSC4RecError, ManifestError, UnavailableError

log = logging.getLogger("lsc4rec.cloud")
REQUEST_ID_KEY = "x-request-id"


class OverloadedError(LSC4RecError):
    """More in-flight work than the server's limit: shed at once (RESOURCE_EXHAUSTED)."""


class DeadlineError(LSC4RecError):
    """The call's deadline passed before the answer was ready (DEADLINE_EXCEEDED)."""


class NotFoundError(LSC4RecError):
    """A named thing (model version, format) is not published (NOT_FOUND)."""


class AuthError(LSC4RecError):
    """The bearer token is missing or wrong (UNAUTHENTICATED)."""


# Order matters: the first matching class wins (subclasses before their bases).
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-visible message for an exception; unknown ones are INTERNAL."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, ManifestError):
        # A published artifact failed verification while being served: the server's fault.
        return grpc.StatusCode.INTERNAL, "model artifact failed verification"
    return grpc.StatusCode.INTERNAL, "internal error"


class CallLog(logging.LoggerAdapter):
    """A logger that puts the call's request id in every line."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        return f"[request_id={self.extra['request_id']}] {msg}", kwargs


def request_id_of(context: grpc.aio.ServicerContext, from_message: str = "") -> str:
    """The message's request id, else the `x-request-id` metadata, else a fresh one."""
    if from_message:
        return from_message[:256]
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:256]
    return uuid.uuid4().hex


class Malformed:
    """A request whose bytes do not parse: the boundary answers it INVALID_ARGUMENT (gRPC alone says UNKNOWN)."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgumentError):
        self.error = error


def lenient_parser(message_type) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes that do not parse become a `Malformed`."""
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Malformed(InvalidArgumentError("request", f"<{len(data)} bytes>",
                                                  f"not a valid {message_type.DESCRIPTOR.name} ({exc})"))
    return parse


def _failed(exc: Exception, method: str, rid: str, observer, start: float) -> tuple[grpc.StatusCode, str]:
    """The one mapping point: the status code and details for `exc`, logged and observed."""
    code, message = _report(exc, method, rid)
    observer.record(method, code, time.perf_counter() - start)
    return code, f"{message} (request_id={rid})"


def _gave_up(context, method: str, rid: str, observer, start: float) -> None:
    """The call was cancelled under us (the client went away or its deadline passed first): count it, log it."""
    remaining = context.time_remaining()  # None: the call had no deadline
    expired = remaining is not None and remaining <= 0.0
    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    observer.record(method, code, time.perf_counter() - start)
    CallLog(log, {"request_id": rid}).info("%s -> %s: the call ended before its answer was ready", method, code.name)


@contextlib.asynccontextmanager
async def _mapped(method: str, request, context, rid: str, observer) -> AsyncIterator[None]:
    """The body of one RPC: its errors mapped once (abort with the code), logged and observed."""
    start = time.perf_counter()
    try:
        if isinstance(request, Malformed):
            raise request.error
        yield
    except asyncio.CancelledError:
        _gave_up(context, method, rid, observer, start)
        raise
    except Exception as exc:  # noqa: BLE001 - this IS the single mapping point
        await context.abort(*_failed(exc, method, rid, observer, start))
    observer.record(method, grpc.StatusCode.OK, time.perf_counter() - start)


def rpc_boundary(method: str, observer_attr: str = "observer") -> Callable:
    """Decorate an async unary servicer method `(self, request, context, rid)`: map errors once, log, observe."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def call(self, request, context):
            rid = request_id_of(context, getattr(request, "request_id", ""))
            async with _mapped(method, request, context, rid, getattr(self, observer_attr)):
                return await fn(self, request, context, rid)
        return call
    return wrap


def stream_boundary(method: str, observer_attr: str = "observer") -> Callable:
    """Same as rpc_boundary for a server-streaming method (an async generator)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def call(self, request, context) -> AsyncIterator:
            rid = request_id_of(context)
            async with _mapped(method, request, context, rid, getattr(self, observer_attr)):
                async for item in fn(self, request, context, rid):
                    yield item
        return call
    return wrap


def _report(exc: Exception, method: str, rid: str) -> tuple[grpc.StatusCode, str]:
    code, message = status_for(exc)
    call_log = CallLog(log, {"request_id": rid})
    if code == grpc.StatusCode.INTERNAL:
        call_log.error("%s failed: %s: %s", method, type(exc).__name__, exc, exc_info=exc)
    else:
        call_log.info("%s -> %s: %s", method, code.name, message)
    return code, message
