"""UNSAFE — development only: identities claimed in a header, no TLS, no signatures.

``greenhouse superlink --insecure`` exists so that a developer can try the runtime
without a PKI. Everything here trusts what the caller *says*: anyone who can reach
the port can claim any name and role. Never use it where data is real. The SuperLink
prints a warning at every start in this mode and records it in its state.

The server side is :class:`UnsafeHeaderAuthInterceptor` (same method table as
:class:`~certs.grpc_auth.AuthInterceptor`, so roles are still checked — against
a claimed role); the client side is :class:`UnsafeIdentityHeader`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import structlog

from certs.errors import AccessDenied, AccessReason, CertificateInvalid, InvalidReason
from certs.grpc_auth import AuthInterceptor, MethodPolicy, Refusal
from certs.grpc_client import _ClientCallDetails
from certs.identity import Identity, check_name
from certs.roles import Role
from certs.signing import EnvelopeKind, SignedEnvelope

__all__ = ["UNSAFE_IDENTITY_HEADER", "UnsafeHeaderAuthInterceptor", "UnsafeIdentityHeader"]

UNSAFE_IDENTITY_HEADER = "gh-unsafe-identity"
_log = structlog.get_logger("certs.unsafe_dev")


def unsafe_claimed_identity(claim: str) -> Identity:
    """Build an :class:`Identity` from a ``role:name`` claim, verifying nothing.

    Raises:
        CertificateInvalid: the claim is not ``role:name`` with a known role and valid name.
    """
    role_text, _, name = claim.partition(":")
    try:
        role = Role(role_text)
    except ValueError:
        raise CertificateInvalid(
            InvalidReason.WRONG_ROLE, f"claimed role {role_text!r} is not a role"
        ) from None
    problem = check_name(name)
    if problem is not None:
        raise CertificateInvalid(InvalidReason.NO_CERTIFICATE, problem)
    fingerprint = hashlib.sha256(f"unsafe-dev:{role.value}:{name}".encode()).hexdigest()
    return Identity(
        role=role,
        name=name,
        organization=None,
        serial=0,
        signing_key=None,
        not_after=datetime.now(UTC) + timedelta(days=1),
        certificate_fingerprint=fingerprint,
    )


class UnsafeHeaderAuthInterceptor(AuthInterceptor):
    """UNSAFE: admits callers by the identity they claim (the method table still applies)."""

    def __init__(
        self,
        methods: Mapping[str, MethodPolicy | Iterable[Role]],
        *,
        is_enrolled: Callable[[Identity], bool] | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
    ) -> None:
        self._methods = {
            name: p if isinstance(p, MethodPolicy) else MethodPolicy(frozenset(p))
            for name, p in methods.items()
        }
        self._is_enrolled = is_enrolled
        self._on_refusal = on_refusal
        _log.warning("unsafe_development_auth", detail="identities are claimed, not verified")

    def admit(
        self,
        context: grpc.ServicerContext,
        method: str,
        *,
        envelope: SignedEnvelope | None,
        body: bytes,
        kind: EnvelopeKind,
    ) -> Identity:
        """Take the claimed identity; check only the method table and enrolment."""
        claims = [v for k, v in context.invocation_metadata() if k == UNSAFE_IDENTITY_HEADER]
        if len(claims) != 1 or not isinstance(claims[0], str):
            raise CertificateInvalid(
                InvalidReason.NO_CERTIFICATE, f"expected one {UNSAFE_IDENTITY_HEADER} header"
            )
        identity = unsafe_claimed_identity(claims[0])
        policy = self._methods.get(method)
        if policy is None:
            raise AccessDenied(AccessReason.METHOD_NOT_ALLOWED, f"method {method} is not allowed")
        if identity.role not in policy.roles:
            raise CertificateInvalid(
                InvalidReason.WRONG_ROLE, f"role {identity.role.value} may not call {method}"
            )
        if self._is_enrolled is not None and not self._is_enrolled(identity):
            raise AccessDenied(AccessReason.NOT_ENROLLED, f"{identity.name} is not enrolled")
        return identity


class UnsafeIdentityHeader(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """UNSAFE: adds a claimed ``role:name`` identity header to every call."""

    def __init__(self, role: Role, name: str) -> None:
        self._claim = f"{role.value}:{name}"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), (UNSAFE_IDENTITY_HEADER, self._claim)]
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
