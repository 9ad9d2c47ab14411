"""Server-side RPC authentication and authorization: one interceptor, deny by default.

:class:`AuthInterceptor` wraps every method handler of a gRPC server. On every
call, before the handler runs, it:

1. reads the peer's client certificate from the TLS auth context and judges it
   with :class:`certs.verify.PeerVerifier` against the federation CA and the
   *current* CRL (the CRL source is called on every RPC, so a revocation takes
   effect on the next call without a restart);
2. looks the method up in its table; an unlisted method is refused;
3. checks the certificate's role against the method's roles and, if given, that
   the identity is enrolled;
4. when the method's policy requires it (by default: whenever the caller is a
   node), verifies the ``gh-sig-bin`` request signature over the method name and
   the *exact* request bytes, with the replay window and nonce cache of
   :class:`certs.signing.RequestVerifier`. The interceptor gets the raw bytes by
   replacing the handler's request deserializer with the identity and calling
   the original deserializer itself, only after the signature verified.

Refusals abort the call with a status and ``"<reason>: <message>"`` details:
``UNAUTHENTICATED`` (no/bad certificate, bad signature, stale or replayed request),
``PERMISSION_DENIED`` (wrong role, unlisted method, not enrolled), ``UNAVAILABLE``
(revocation status unknown). The mapping lives in :func:`status_for` alone.
The handler reads the verified identity with :func:`identity_from_context`.

Client-streaming calls carry a ``STREAM`` signature covering the method,
timestamp and nonce only; their content is protected by TLS and should be
attributed by a :class:`~certs.signing.SignedEnvelope` over the assembled payload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from cryptography import x509

from certs.errors import (
    AccessDenied,
    AccessReason,
    CertError,
    CertificateInvalid,
    IdentityUnavailable,
    InvalidReason,
    MalformedEnvelope,
    ReplayDetected,
    RevocationListInvalid,
    SignatureError,
    SignatureInvalid,
    SignatureMissing,
    StaleRequest,
)
from certs.identity import Identity
from certs.revocation import RevocationSource
from certs.roles import Kind, Role
from certs.signing import SIGNATURE_HEADER, EnvelopeKind, RequestVerifier, SignedEnvelope
from certs.verify import PeerVerifier

__all__ = [
    "SIGNATURE_HEADER",
    "AuthInterceptor",
    "MethodPolicy",
    "Refusal",
    "allow",
    "identity_from_context",
    "status_for",
]

_log = structlog.get_logger("certs.grpc_auth")
_CURRENT: ContextVar[tuple[object, Identity] | None] = ContextVar("gh_identity", default=None)


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """Who may call one method, and whether requests must be signed.

    ``signed=None`` (the default) requires a signature exactly when the caller is
    a node; ``True`` requires one from every caller; ``False`` never checks.
    """

    roles: frozenset[Role]
    signed: bool | None = None

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError("a method policy needs at least one role (omit the method to deny)")

    def requires_signature(self, identity: Identity) -> bool:
        """Whether a call by ``identity`` must carry a valid signature."""
        return identity.kind is Kind.NODE if self.signed is None else self.signed


def allow(*roles: Role, signed: bool | None = None) -> MethodPolicy:
    """Shorthand: ``allow(Role.NODE)`` is ``MethodPolicy(frozenset({Role.NODE}))``."""
    return MethodPolicy(frozenset(roles), signed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A refused call, passed to the ``on_refusal`` hook (e.g. for an audit entry)."""

    method: str
    peer: str
    code: grpc.StatusCode
    reason: str
    message: str


_SIGNATURE_TAGS: tuple[tuple[type[SignatureError], str], ...] = (
    (SignatureMissing, "signature-missing"),
    (MalformedEnvelope, "malformed-signature"),
    (SignatureInvalid, "bad-signature"),
    (StaleRequest, "stale-request"),
    (ReplayDetected, "replayed-request"),
)


def status_for(error: CertError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and reason tag for a refusal (the one mapping place)."""
    if isinstance(error, CertificateInvalid):
        if error.reason is InvalidReason.WRONG_ROLE:
            return grpc.StatusCode.PERMISSION_DENIED, error.reason.value
        return grpc.StatusCode.UNAUTHENTICATED, error.reason.value
    if isinstance(error, AccessDenied):
        return grpc.StatusCode.PERMISSION_DENIED, error.reason.value
    if isinstance(error, RevocationListInvalid):
        return grpc.StatusCode.UNAVAILABLE, InvalidReason.REVOCATION_UNKNOWN.value
    if isinstance(error, SignatureError):
        tag = next((t for cls, t in _SIGNATURE_TAGS if isinstance(error, cls)), "bad-signature")
        return grpc.StatusCode.UNAUTHENTICATED, tag
    return grpc.StatusCode.INTERNAL, "internal"


def identity_from_context(context: grpc.ServicerContext) -> Identity:
    """The identity :class:`AuthInterceptor` verified for the call of ``context``.

    Raises:
        IdentityUnavailable: no interceptor verified this call.
    """
    current = _CURRENT.get()
    if current is None or current[0] is not context:
        raise IdentityUnavailable("no verified identity for this call (is AuthInterceptor set?)")
    return current[1]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _peer_pem(context: grpc.ServicerContext) -> bytes | None:
    values = context.auth_context().get("x509_pem_cert")
    return values[0] if values else None


def _envelope(metadata: Iterable[tuple[str, str | bytes]] | None) -> SignedEnvelope | None:
    values = [v for k, v in (metadata or ()) if k == SIGNATURE_HEADER]
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], bytes):
        raise MalformedEnvelope(f"expected one binary {SIGNATURE_HEADER} header")
    return SignedEnvelope.parse(values[0])


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authenticates, authorizes and checks signatures on every call; denies by default."""

    def __init__(
        self,
        methods: Mapping[str, MethodPolicy | Iterable[Role]],
        *,
        ca_cert: x509.Certificate,
        crl_source: RevocationSource,
        is_enrolled: Callable[[Identity], bool] | None = None,
        request_verifier: RequestVerifier | None = None,
        clock: Callable[[], datetime] = _utcnow,
        on_refusal: Callable[[Refusal], None] | None = None,
    ) -> None:
        """Guard the methods in ``methods`` (full names, ``/pkg.Service/Method``).

        Args:
            methods: method name -> policy (or roles). Unlisted methods are refused.
            ca_cert: the federation CA certificate.
            crl_source: called on every call for the current verified CRL.
            is_enrolled: optional check that a verified identity is enrolled.
            request_verifier: replay window and nonce cache for signatures
                (default: ±60 s on ``clock``).
            clock: the current time (tests inject one).
            on_refusal: called with every refusal (audit); must not raise.
        """
        self._methods = {
            name: p if isinstance(p, MethodPolicy) else MethodPolicy(frozenset(p))
            for name, p in methods.items()
        }
        self._peers = PeerVerifier(ca_cert)
        self._crl_source = crl_source
        self._is_enrolled = is_enrolled
        self._clock = clock
        self._verifier = request_verifier or RequestVerifier(clock=lambda: clock().timestamp())
        self._on_refusal = on_refusal

    def admit(
        self,
        context: grpc.ServicerContext,
        method: str,
        *,
        envelope: SignedEnvelope | None,
        body: bytes,
        kind: EnvelopeKind,
    ) -> Identity:
        """Run every check for one call and return the caller's identity.

        Raises:
            CertificateInvalid, AccessDenied, RevocationListInvalid, SignatureError:
                the call must be refused (see :func:`status_for`).
        """
        policy = self._methods.get(method)
        identity = self._peers.verify_peer(
            _peer_pem(context),
            now=self._clock(),
            revocations=self._crl_source(),
            roles=None if policy is None else policy.roles,
        )
        if policy is None:
            raise AccessDenied(AccessReason.METHOD_NOT_ALLOWED, f"method {method} is not allowed")
        if self._is_enrolled is not None and not self._is_enrolled(identity):
            raise AccessDenied(AccessReason.NOT_ENROLLED, f"{identity.describe()} is not enrolled")
        if policy.requires_signature(identity):
            if envelope is None:
                raise SignatureMissing(f"{method} requires a signed request ({SIGNATURE_HEADER})")
            if identity.signing_key is None:
                raise SignatureInvalid(f"{identity.describe()} has no bound signing key")
            self._verifier.verify(
                envelope, kind=kind, method=method, body=body, signing_key=identity.signing_key
            )
        return identity

    def _refuse(self, context: grpc.ServicerContext, method: str, error: CertError) -> None:
        code, reason = status_for(error)
        refusal = Refusal(
            method=method, peer=context.peer(), code=code, reason=reason, message=str(error)
        )
        _log.warning(
            "rpc_refused",
            method=method,
            peer=refusal.peer,
            code=code.name,
            reason=reason,
            error=str(error),
        )
        if self._on_refusal is not None:
            try:
                self._on_refusal(refusal)
            except Exception:  # the hook must not turn a refusal into a crash
                _log.exception("on_refusal_hook_failed", method=method)
        context.abort(code, f"{reason}: {error}")

    def _guard(
        self,
        context: grpc.ServicerContext,
        method: str,
        metadata: Any,
        body: bytes,
        kind: EnvelopeKind,
    ) -> Identity:
        try:
            return self.admit(context, method, envelope=_envelope(metadata), body=body, kind=kind)
        except CertError as error:
            self._refuse(context, method, error)
            raise  # unreachable: abort raises
        except Exception:  # a failing is_enrolled or CRL source must not leak details
            _log.exception("rpc_admission_failed", method=method)
            context.abort(grpc.StatusCode.UNAVAILABLE, "authorization check failed")
            raise

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method's handler so every call is admitted first."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(
            handler, self, handler_call_details.method, handler_call_details.invocation_metadata
        )


def _decode(handler: grpc.RpcMethodHandler, raw: bytes, context: grpc.ServicerContext) -> Any:
    if handler.request_deserializer is None:
        return raw
    try:
        return handler.request_deserializer(raw)
    except Exception:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed: request could not be decoded")
        raise


def _with_identity(context: object, identity: Identity, stream: Iterator[Any]) -> Iterator[Any]:
    token = _CURRENT.set((context, identity))
    try:
        yield from stream
    finally:
        with contextlib.suppress(ValueError):  # closed from another context
            _CURRENT.reset(token)


def _wrap(
    handler: grpc.RpcMethodHandler, guard: AuthInterceptor, method: str, metadata: Any
) -> grpc.RpcMethodHandler:
    serializer = handler.response_serializer
    if handler.unary_unary is not None or handler.unary_stream is not None:

        def unary(raw: bytes, context: grpc.ServicerContext) -> Any:
            identity = guard._guard(context, method, metadata, raw, EnvelopeKind.REQUEST)
            request = _decode(handler, raw, context)
            if handler.unary_stream is not None:
                return _with_identity(context, identity, handler.unary_stream(request, context))
            token = _CURRENT.set((context, identity))
            try:
                return handler.unary_unary(request, context)
            finally:
                _CURRENT.reset(token)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(unary, request_deserializer=None, response_serializer=serializer)

    def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        identity = guard._guard(context, method, metadata, b"", EnvelopeKind.STREAM)
        if handler.stream_stream is not None:
            return _with_identity(context, identity, handler.stream_stream(requests, context))
        token = _CURRENT.set((context, identity))
        try:
            return handler.stream_unary(requests, context)
        finally:
            _CURRENT.reset(token)

    factory = (
        grpc.stream_stream_rpc_method_handler
        if handler.stream_stream is not None
        else grpc.stream_unary_rpc_method_handler
    )
    return factory(
        streaming, request_deserializer=handler.request_deserializer, response_serializer=serializer
    )
