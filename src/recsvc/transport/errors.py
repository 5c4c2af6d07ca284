"""The one table that turns the project's errors into gRPC status codes and details."""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from recsvc.errors import (
    CapStoreUnavailable,
    DeadlineExceeded,
    FeatureStoreUnavailable,
    InvalidArgument,
    NotFound,
    Overloaded,
    RecsvcError,
)

log = logging.getLogger(__name__)

# Most specific first: the first matching row wins.
TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (FeatureStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (CapStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (RecsvcError, grpc.StatusCode.FAILED_PRECONDITION),
    # the caller went away (cancelled, or its deadline passed) while the work awaited: nothing
    # is sent back, the row only names the outcome in the metrics
    (asyncio.CancelledError, grpc.StatusCode.CANCELLED),
)
INTERNAL_MESSAGE = "internal error"
CODE_NAMES = ("OK", *dict.fromkeys(code.name for _, code in TABLE), "INTERNAL")
"""Every status code a call can end with (for metric series made before the first call)."""


def status_for(exc: BaseException, rpc: str) -> status_pb2.Status:
    """The google.rpc.Status a caller receives for `exc`; unexpected errors say nothing more
    than "internal error" (the traceback goes to the log only)."""
    code = next((c for kind, c in TABLE if isinstance(exc, kind)), None)
    if code is None:
        log.error("%s failed", rpc, exc_info=exc)
        return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if isinstance(exc, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field,
                                                        description=exc.message)]))
        status.details.append(detail)
    return status


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, rpc: str) -> None:
    """End the call with the status of `exc` (raises grpc's AbortError)."""
    await context.abort_with_status(rpc_status.to_status(status_for(exc, rpc)))


def code_name(exc: BaseException | None) -> str:
    """The status code name a call ended with, for metrics labels."""
    if exc is None:
        return "OK"
    code = next((c for kind, c in TABLE if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)
    return str(code.name)
