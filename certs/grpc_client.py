"""Client-side request signing: a gRPC client interceptor for SuperNodes.

:class:`SigningInterceptor` signs every outgoing call with the node's Ed25519 key
and sends the :class:`~certs.signing.SignedEnvelope` in the ``gh-sig-bin``
metadata header (see :mod:`certs.grpc_auth` for the server side). For unary
requests the signature covers the exact serialized request: the request must be
``bytes`` (use a channel method with no request serializer), or a protobuf
message, whose ``SerializeToString()`` is what the generated stub sends. For
client-streaming calls it covers the method, timestamp and nonce (kind
``STREAM``). The private key stays in this process; nothing is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs.errors import SignatureError
from certs.signing import SIGNATURE_HEADER, EnvelopeKind, EnvelopeSigner

__all__ = ["SigningInterceptor", "request_bytes"]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):  # type: ignore[misc]
    """Concrete call details carrying the extra signature header."""


def request_bytes(request: object) -> bytes:
    """The exact bytes a unary request travels as.

    Raises:
        SignatureError: the request is neither bytes nor a protobuf message.
    """
    if isinstance(request, bytes | bytearray | memoryview):
        return bytes(request)
    serialize = getattr(request, "SerializeToString", None)
    if callable(serialize):
        data = serialize()
        if isinstance(data, bytes):
            return data
    raise SignatureError(
        f"cannot sign a request of type {type(request).__name__}: pass bytes or a protobuf message"
    )


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds a ``gh-sig-bin`` signature to every call. Use with ``grpc.intercept_channel``."""

    def __init__(
        self, signing_key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        """Sign with ``signing_key``, stamping times from ``clock`` (seconds)."""
        self._signer = EnvelopeSigner(signing_key)
        self._clock = clock

    def _signed(
        self, details: grpc.ClientCallDetails, kind: EnvelopeKind, body: bytes
    ) -> _ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        envelope = self._signer.sign(
            kind=kind,
            method=method,
            body=body,
            timestamp_ms=int(self._clock() * 1000),
        )
        metadata = [*(details.metadata or ()), (SIGNATURE_HEADER, envelope.to_bytes())]
        return _ClientCallDetails(
            method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Sign the serialized request, then send it."""
        details = self._signed(client_call_details, EnvelopeKind.REQUEST, request_bytes(request))
        return continuation(details, request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Sign the serialized request, then send it."""
        details = self._signed(client_call_details, EnvelopeKind.REQUEST, request_bytes(request))
        return continuation(details, request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Sign the stream's start (method, time, nonce), then send it."""
        details = self._signed(client_call_details, EnvelopeKind.STREAM, b"")
        return continuation(details, request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Sign the stream's start (method, time, nonce), then send it."""
        details = self._signed(client_call_details, EnvelopeKind.STREAM, b"")
        return continuation(details, request_iterator)
