"""The one place where exceptions become gRPC status codes.

:data:`CATALOG` maps exception types to a status code; :class:`ErrorTranslator`
(a server interceptor) applies it to every handler, including streaming ones, and
aborts with the code and the exception's message. Anything not in the catalog is a
bug: it is logged with its traceback and the caller sees ``INTERNAL`` with no
details, so internals never leak to a peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from appliance.bundle import BundleError
from appliance.logs import get_logger
from appliance.receipts import ReceiptInvalid
from appliance.state import errors as state_errors
from appliance.strategy.checkpoint import CheckpointError
from appliance.transport import TransportError
from appliance.wire import WireError
from certs.errors import CertError, CertificateInvalid, MalformedEnvelope, SignatureError
from dp.errors import DPError

__all__ = ["CATALOG", "ErrorTranslator", "status_for_exception"]

_log = get_logger("appliance.superlink.errors")

#: Exception type -> status code. The first matching entry (in order) wins.
CATALOG: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (WireError, grpc.StatusCode.INVALID_ARGUMENT),
    (TransportError, grpc.StatusCode.INVALID_ARGUMENT),
    (BundleError, grpc.StatusCode.INVALID_ARGUMENT),
    (CheckpointError, grpc.StatusCode.INVALID_ARGUMENT),
    (ReceiptInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (DPError, grpc.StatusCode.INVALID_ARGUMENT),
    (state_errors.BlobTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (state_errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (state_errors.NotAddressedToNode, grpc.StatusCode.PERMISSION_DENIED),
    (state_errors.NotDeliveredToNode, grpc.StatusCode.PERMISSION_DENIED),
    (state_errors.WrongRun, grpc.StatusCode.PERMISSION_DENIED),
    (state_errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (state_errors.NodeAlreadyEnrolled, grpc.StatusCode.ALREADY_EXISTS),
    (state_errors.DuplicateMessage, grpc.StatusCode.ALREADY_EXISTS),
    (state_errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (state_errors.MessageExpired, grpc.StatusCode.FAILED_PRECONDITION),
    (state_errors.RunNotRunning, grpc.StatusCode.FAILED_PRECONDITION),
    (state_errors.StorageError, grpc.StatusCode.UNAVAILABLE),
    (state_errors.StateError, grpc.StatusCode.FAILED_PRECONDITION),
    (MalformedEnvelope, grpc.StatusCode.UNAUTHENTICATED),
    (SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (CertificateInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (CertError, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for_exception(exc: BaseException) -> grpc.StatusCode | None:
    """The catalog's code for ``exc``, or None if it is not a known failure."""
    for kind, code in CATALOG:
        if isinstance(exc, kind):
            return code
    return None


def _translate(exc: Exception, context: grpc.ServicerContext, method: str) -> None:
    if context.code() is not None:  # the handler already aborted: keep its status
        raise exc
    code = status_for_exception(exc)
    if code is None:
        _log.exception("unexpected error in handler", method=method)
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    context.abort(code, str(exc))  # type: ignore[arg-type]


def _guard_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            _translate(exc, context, method)

    return handler


def _guard_stream(
    behaviour: Callable[..., Iterator[Any]], method: str
) -> Callable[..., Iterator[Any]]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except Exception as exc:
            _translate(exc, context, method)

    return handler


class ErrorTranslator(grpc.ServerInterceptor):  # type: ignore[misc]
    """Applies :data:`CATALOG` to every method's handler."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _guard_unary(handler.stream_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method),
            handler.request_deserializer,
            handler.response_serializer,
        )
