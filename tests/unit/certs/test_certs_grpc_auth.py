"""The auth interceptor's decision path, driven directly with an in-memory context.

The real-TLS tests are in tests/integration/certs; with require-client-auth TLS a
foreign, self-signed, expired or missing client certificate never reaches the
interceptor there, so its reasons are asserted here.
"""

from __future__ import annotations

import re
from collections import namedtuple
from datetime import timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    SIGNATURE_HEADER,
    AuthInterceptor,
    EnvelopeKind,
    IdentityUnavailable,
    RevocationList,
    RevocationListInvalid,
    Role,
    allow,
    certificate_pem,
    identity_from_context,
    sign_envelope,
)
from certs.keys import generate_tls_key

Details = namedtuple("Details", ["method", "invocation_metadata"])
NODE_METHOD = "/test.Fleet/Pull"
USER_METHOD = "/test.Control/Submit"


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, pem: bytes | None) -> None:
        self._pem = pem
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def _echo(request: bytes, context) -> bytes:
    identity = identity_from_context(context)
    return f"{identity.name}:{identity.role.value}:".encode() + request


class Harness:
    def __init__(self, pki, *, revoked=(), enrolled=None, crl_error=False) -> None:
        self.pki = pki
        self.refusals = []

        def crl() -> RevocationList:
            if crl_error:
                raise RevocationListInvalid("CRL expired at 2030-01-01; publish a new one")
            return RevocationList(
                serials=frozenset(revoked),
                this_update=pki.now,
                next_update=pki.now + timedelta(days=1),
            )

        self.interceptor = AuthInterceptor(
            {NODE_METHOD: allow(Role.NODE), USER_METHOD: [Role.DATA_SCIENTIST]},
            ca_cert=pki.ca_cert,
            crl_source=crl,
            is_enrolled=enrolled,
            clock=lambda: pki.now,
            on_refusal=self.refusals.append,
        )

    def call(
        self,
        issued_or_pem,
        method=NODE_METHOD,
        body=b"hi",
        signer=None,
        handler=None,
        metadata=None,
    ):
        if issued_or_pem is None or isinstance(issued_or_pem, bytes):
            pem = issued_or_pem
        else:
            pem = certificate_pem(issued_or_pem.cert)
            signer = signer or issued_or_pem.signing_key
        if metadata is None and signer is not None:
            envelope = sign_envelope(
                signer,
                kind=EnvelopeKind.REQUEST,
                method=method,
                body=body,
                timestamp_ms=int(self.pki.now.timestamp() * 1000),
            )
            metadata = ((SIGNATURE_HEADER, envelope.to_bytes()),)
        handler = handler or grpc.unary_unary_rpc_method_handler(_echo)
        wrapped = self.interceptor.intercept_service(
            lambda _: handler, Details(method, metadata or ())
        )
        context = FakeContext(pem)
        try:
            return wrapped.unary_unary(body, context), context
        except Aborted:
            return None, context


def _self_signed_pem(pki) -> bytes:
    key = generate_tls_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "st-marys")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(pki.now - timedelta(days=1))
        .not_valid_after(pki.now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    return certificate_pem(cert)


def test_valid_node_and_user_reach_the_handler(pki, node, scientist) -> None:
    harness = Harness(pki)
    reply, context = harness.call(node)
    assert reply == b"st-marys:node:hi" and context.code is None
    reply, _ = harness.call(scientist, method=USER_METHOD)
    assert reply == b"alice:data-scientist:hi"
    assert harness.refusals == []


def test_refusals_carry_status_and_reason(pki, foreign_pki, node, scientist) -> None:
    expired = pki.issue(
        "late", not_before=pki.now - timedelta(days=9), not_after=pki.now - timedelta(days=1)
    )
    u, p, a = (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAVAILABLE,
    )
    cases = {
        "no certificate": (Harness(pki), None, {}, u, "no-certificate: no client certificate"),
        "foreign CA": (
            Harness(pki),
            foreign_pki.issue("st-marys"),
            {},
            u,
            "foreign-ca: .* issued by a foreign CA",
        ),
        "self-signed": (Harness(pki), _self_signed_pem(pki), {}, u, "self-signed: "),
        "expired": (Harness(pki), expired, {}, u, "expired: certificate of node late .* expired"),
        "revoked": (
            Harness(pki, revoked={node.cert.serial_number}),
            node,
            {},
            u,
            "revoked: certificate of node st-marys .* is revoked",
        ),
        "wrong role": (
            Harness(pki),
            node,
            {"method": USER_METHOD},
            p,
            "wrong-role: .* has role node; allowed: data-scientist",
        ),
        "unlisted method": (
            Harness(pki),
            node,
            {"method": "/test.Fleet/Secret"},
            p,
            "method-not-allowed: method /test.Fleet/Secret is not allowed",
        ),
        "not enrolled": (
            Harness(pki, enrolled=lambda i: i.name != "st-marys"),
            node,
            {},
            p,
            "not-enrolled: node st-marys .* is not enrolled",
        ),
        "unsigned node": (
            Harness(pki),
            node,
            {"metadata": ((b"x", b"y"),)},
            u,
            "signature-missing: /test.Fleet/Pull requires a signed request",
        ),
        "CRL stale": (Harness(pki, crl_error=True), node, {}, a, "revocation-unknown: CRL expired"),
    }
    for label, (harness, caller, extra, code, pattern) in cases.items():
        reply, context = harness.call(caller, **extra)
        assert reply is None, label
        assert context.code is code, label
        assert re.match(pattern, context.details), (label, context.details)
        assert harness.refusals[-1].code is code, label
        assert harness.refusals[-1].method == extra.get("method", NODE_METHOD)


def test_signature_checks_in_the_interceptor(pki, node) -> None:
    harness = Harness(pki)
    other = pki.issue("other-site")
    _, context = harness.call(node, signer=other.signing_key)
    assert context.code is grpc.StatusCode.UNAUTHENTICATED
    assert context.details.startswith("bad-signature: signed with key")
    envelope = sign_envelope(
        node.signing_key,
        kind=EnvelopeKind.REQUEST,
        method=NODE_METHOD,
        body=b"hi",
        timestamp_ms=int(pki.now.timestamp() * 1000),
    )
    metadata = ((SIGNATURE_HEADER, envelope.to_bytes()),)
    assert harness.call(node, metadata=metadata)[0] == b"st-marys:node:hi"
    _, context = harness.call(node, metadata=metadata)
    assert context.details.startswith("replayed-request: nonce was already used")
    _, context = harness.call(node, metadata=((SIGNATURE_HEADER, b"junk"),))
    assert context.details.startswith("malformed-signature: ")
    _, context = harness.call(node, body=b"other", metadata=metadata)
    assert context.details == "bad-signature: body does not match the signed SHA-256 digest"


def test_users_need_no_signature_by_default(pki, scientist) -> None:
    reply, _ = Harness(pki).call(scientist, method=USER_METHOD, metadata=())
    assert reply == b"alice:data-scientist:hi"


def test_request_is_decoded_only_after_admission(pki, node, scientist) -> None:
    decoded: list[bytes] = []

    def deserializer(raw: bytes) -> str:
        decoded.append(raw)
        if raw == b"\xff":
            raise ValueError("bad")
        return raw.decode()

    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request.upper().encode(), request_deserializer=deserializer
    )
    harness = Harness(pki)
    assert harness.call(node, handler=handler)[0] == b"HI"
    _, context = harness.call(scientist, handler=handler)  # refused: wrong role
    assert context.code is grpc.StatusCode.PERMISSION_DENIED
    assert decoded == [b"hi"]
    _, context = harness.call(node, body=b"\xff", handler=handler)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT


def test_streaming_handlers_see_the_identity(pki, node) -> None:
    def stream(request: bytes, context):
        for _ in range(2):
            yield identity_from_context(context).name.encode()

    handler = grpc.unary_stream_rpc_method_handler(stream)
    harness = Harness(pki)
    wrapped = harness.interceptor.intercept_service(lambda _: handler, Details(NODE_METHOD, ()))
    context = FakeContext(certificate_pem(node.cert))
    with pytest.raises(Aborted):  # node without signature
        wrapped.unary_stream(b"x", context)
    envelope = sign_envelope(
        node.signing_key,
        kind=EnvelopeKind.REQUEST,
        method=NODE_METHOD,
        body=b"x",
        timestamp_ms=int(pki.now.timestamp() * 1000),
    )
    wrapped = harness.interceptor.intercept_service(
        lambda _: handler, Details(NODE_METHOD, ((SIGNATURE_HEADER, envelope.to_bytes()),))
    )
    assert list(wrapped.unary_stream(b"x", FakeContext(certificate_pem(node.cert)))) == [
        b"st-marys",
        b"st-marys",
    ]


def test_client_stream_signature_covers_the_call_start(pki, node) -> None:
    handler = grpc.stream_unary_rpc_method_handler(
        lambda requests, context: identity_from_context(context).name.encode() + b"".join(requests)
    )
    envelope = sign_envelope(
        node.signing_key,
        kind=EnvelopeKind.STREAM,
        method=NODE_METHOD,
        body=b"",
        timestamp_ms=int(pki.now.timestamp() * 1000),
    )
    harness = Harness(pki)
    wrapped = harness.interceptor.intercept_service(
        lambda _: handler, Details(NODE_METHOD, ((SIGNATURE_HEADER, envelope.to_bytes()),))
    )
    assert wrapped.stream_unary(iter([b"a", b"b"]), FakeContext(certificate_pem(node.cert))) == (
        b"st-marysab"
    )
    request_sig = sign_envelope(
        node.signing_key,
        kind=EnvelopeKind.REQUEST,
        method=NODE_METHOD,
        body=b"",
        timestamp_ms=int(pki.now.timestamp() * 1000),
    )
    wrapped = harness.interceptor.intercept_service(
        lambda _: handler, Details(NODE_METHOD, ((SIGNATURE_HEADER, request_sig.to_bytes()),))
    )
    context = FakeContext(certificate_pem(node.cert))
    with pytest.raises(Aborted):
        wrapped.stream_unary(iter([b"a"]), context)
    assert "signature is for a request, expected a stream" in context.details


def test_failing_enrollment_check_is_unavailable_not_a_crash(pki, node) -> None:
    def broken(identity) -> bool:
        raise RuntimeError("database down: secret connection string")

    _, context = Harness(pki, enrolled=broken).call(node)
    assert context.code is grpc.StatusCode.UNAVAILABLE
    assert context.details == "authorization check failed"


def test_identity_outside_a_call_is_unavailable() -> None:
    with pytest.raises(IdentityUnavailable, match="no verified identity"):
        identity_from_context(FakeContext(None))


def test_unknown_method_is_left_to_grpc(pki) -> None:
    assert Harness(pki).interceptor.intercept_service(lambda _: None, Details("/x/y", ())) is None


def test_empty_role_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        allow()
