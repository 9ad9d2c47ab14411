"""Real mTLS + AuthInterceptor + signed requests on 127.0.0.1 with real certificates.

With require-client-auth TLS (the only mode gRPC Python offers besides "no client
certificate"), a client certificate from a foreign CA, a self-signed one, an
expired one, or none at all fails the TLS handshake inside gRPC: the client sees
UNAVAILABLE and no reason (gRPC logs the OpenSSL reason on the server side). For
those cases these tests assert UNAVAILABLE *and* that the client-side preflight
(:func:`certs.client_credentials`) names the exact reason; the interceptor's own
reasons for them are tested in tests/unit/certs/test_certs_grpc_auth.py.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from datetime import timedelta

import grpc
import pytest
from certs_echo import NODE_METHOD, UNLISTED_METHOD, USER_METHOD, now_utc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    SIGNATURE_HEADER,
    CertificateInvalid,
    EnvelopeKind,
    InvalidReason,
    Role,
    SigningInterceptor,
    certificate_pem,
    sign_envelope,
    verify_certificate,
)
from certs.keys import generate_tls_key, private_key_pem

pytestmark = pytest.mark.integration
TIMEOUT_S = 5


def _call(target, credentials, method, body=b"ping", *, signer=None, metadata=None):
    """One unary call on a fresh channel; returns (reply, None) or (None, RpcError)."""
    with grpc.secure_channel(target, credentials) as channel:
        intercepted = (
            channel
            if signer is None
            else grpc.intercept_channel(channel, SigningInterceptor(signer))
        )
        stub = intercepted.unary_unary(method)
        try:
            return stub(body, timeout=TIMEOUT_S, metadata=metadata), None
        except grpc.RpcError as error:
            return None, error


def _refused(error, code, text):
    assert error is not None, "the call was not refused"
    assert error.code() is code, (error.code(), error.details())
    assert text in error.details(), error.details()


def test_valid_node_and_user_connect_with_the_right_identity(server, federation):
    node = federation.party("st-marys")
    reply, error = _call(server.target, node.credentials(), NODE_METHOD, signer=node.signing_key)
    assert error is None
    assert reply == f"node:st-marys:node:{node.cert.serial_number:x}:ping".encode()
    user = federation.party("alice", Role.DATA_SCIENTIST)
    reply, error = _call(server.target, user.credentials(), USER_METHOD)
    assert reply == f"user:alice:data-scientist:{user.cert.serial_number:x}:ping".encode()


def test_node_certificate_on_user_only_method(server, federation):
    node = federation.party("site-b")
    _, error = _call(server.target, node.credentials(), USER_METHOD, signer=node.signing_key)
    _refused(error, grpc.StatusCode.PERMISSION_DENIED, "wrong-role: certificate of node site-b")
    _refused(error, grpc.StatusCode.PERMISSION_DENIED, "allowed: auditor, data-scientist")


def test_unlisted_method_is_denied(server, federation):
    user = federation.party("bob", Role.AUDITOR)
    _, error = _call(server.target, user.credentials(), UNLISTED_METHOD)
    _refused(
        error,
        grpc.StatusCode.PERMISSION_DENIED,
        "method-not-allowed: method /test.Echo/Unlisted is not allowed",
    )


def test_not_enrolled(server, federation):
    node = federation.party("stranger-1")
    _, error = _call(server.target, node.credentials(), NODE_METHOD, signer=node.signing_key)
    _refused(error, grpc.StatusCode.PERMISSION_DENIED, "not-enrolled: node stranger-1")


def test_revoked_while_the_server_runs(server, federation):
    node = federation.party("site-revoked")
    with grpc.secure_channel(server.target, node.credentials()) as channel:
        stub = grpc.intercept_channel(channel, SigningInterceptor(node.signing_key)).unary_unary(
            NODE_METHOD
        )
        assert stub(b"1", timeout=TIMEOUT_S).startswith(b"node:site-revoked:")
        federation.ca.revoke(
            node.cert.serial_number, reason=x509.ReasonFlags.key_compromise, actor="tester"
        )
        federation.publish_crl()
        with pytest.raises(grpc.RpcError) as info:  # same connection, next call
            stub(b"2", timeout=TIMEOUT_S)
    _refused(
        info.value, grpc.StatusCode.UNAUTHENTICATED, "revoked: certificate of node site-revoked"
    )


def test_certificate_expiring_during_a_connection(make_server, federation):
    offset = [timedelta(0)]

    echo = make_server(clock=lambda: now_utc() + offset[0], is_enrolled=lambda identity: True)
    node = federation.party("site-expiring")
    with grpc.secure_channel(echo.target, node.credentials()) as channel:
        stub = grpc.intercept_channel(channel, SigningInterceptor(node.signing_key)).unary_unary(
            NODE_METHOD
        )
        assert stub(b"1", timeout=TIMEOUT_S).startswith(b"node:site-expiring:")
        offset[0] = timedelta(days=91)
        with pytest.raises(grpc.RpcError) as info:
            stub(b"2", timeout=TIMEOUT_S)
    _refused(
        info.value, grpc.StatusCode.UNAUTHENTICATED, "expired: certificate of node site-expiring"
    )


def _self_signed(federation):
    """A self-signed client certificate, its channel credentials and its preflight check."""
    key = generate_tls_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "st-marys")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now_utc() - timedelta(hours=1))
        .not_valid_after(now_utc() + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    credentials = grpc.ssl_channel_credentials(
        federation.ca_path.read_bytes(), private_key_pem(key), certificate_pem(cert)
    )
    return credentials, lambda: verify_certificate(
        cert, ca_cert=federation.ca.certificate, now=now_utc()
    )


def _foreign(federation, foreign):
    party = foreign.party("st-marys")
    as_if_ours = dataclasses.replace(party, ca_path=federation.ca_path)
    return as_if_ours.unchecked_credentials(), as_if_ours.credentials


def _expired(federation):
    party = federation.party(
        "site-old",
        not_before=now_utc() - timedelta(days=10),
        not_after=now_utc() - timedelta(days=1),
    )
    return party.unchecked_credentials(), party.credentials


HANDSHAKE_CASES = {
    "foreign CA": (lambda fed, other: _foreign(fed, other), InvalidReason.FOREIGN_CA),
    "self-signed": (lambda fed, other: _self_signed(fed), InvalidReason.SELF_SIGNED),
    "expired": (lambda fed, other: _expired(fed), InvalidReason.EXPIRED),
}


@pytest.mark.parametrize("case", HANDSHAKE_CASES.values(), ids=list(HANDSHAKE_CASES))
def test_handshake_refusals_and_client_preflight(case, server, federation, foreign):
    build, reason = case
    credentials, preflight = build(federation, foreign)
    _, error = _call(server.target, credentials, USER_METHOD)
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(CertificateInvalid) as info:
        preflight()
    assert info.value.reason is reason


def test_no_client_certificate_fails_the_handshake(server, federation):
    credentials = grpc.ssl_channel_credentials(federation.ca_path.read_bytes())
    _, error = _call(server.target, credentials, USER_METHOD)
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE


def _served_serial(echo, party) -> int:
    context = ssl.create_default_context(cafile=str(party.ca_path))
    context.load_cert_chain(str(party.cert_path), str(party.key_path))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", echo.port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_server_certificate_rotation_without_restart(make_server, federation):
    echo = make_server()
    user = federation.party("carol", Role.DATA_SCIENTIST)
    first = _served_serial(echo, user)
    assert first == echo.tls.certificate.serial_number
    with grpc.secure_channel(echo.target, user.credentials()) as old_channel:
        stub = old_channel.unary_unary(USER_METHOD)
        assert stub(b"before", timeout=TIMEOUT_S).endswith(b"before")
        tls_dir = echo.files.certificate.parent
        rotated = federation.server_files(tls_dir, overwrite=True)
        second = _served_serial(echo, user)
        assert second != first
        assert (
            second == x509.load_pem_x509_certificate(rotated.certificate.read_bytes()).serial_number
        )
        assert echo.tls.reloads >= 1
        assert stub(b"after", timeout=TIMEOUT_S).endswith(b"after")  # old connection lives on
    reply, error = _call(echo.target, user.credentials(), USER_METHOD, b"new")
    assert error is None and reply.endswith(b"new")


class TestSignedRequests:
    def _envelope(self, key, body, *, method=NODE_METHOD, age_s=0.0):
        return sign_envelope(
            key,
            kind=EnvelopeKind.REQUEST,
            method=method,
            body=body,
            timestamp_ms=int((time.time() - age_s) * 1000),
        )

    def test_valid_signature_passes(self, server, federation):
        node = federation.party("signer-ok")
        envelope = self._envelope(node.signing_key, b"body")
        reply, error = _call(
            server.target,
            node.credentials(),
            NODE_METHOD,
            b"body",
            metadata=((SIGNATURE_HEADER, envelope.to_bytes()),),
        )
        assert error is None and reply.endswith(b":body")

    def test_refusals(self, server, federation):
        node = federation.party("signer")
        other = federation.party("other-signer")
        replayed = self._envelope(node.signing_key, b"body")
        cases = {
            "tampered body": (
                self._envelope(node.signing_key, b"body"),
                b"bodY",
                "bad-signature: body does not match the signed SHA-256 digest",
            ),
            "wrong key": (
                self._envelope(other.signing_key, b"body"),
                b"body",
                "bad-signature: signed with key",
            ),
            "stale": (
                self._envelope(node.signing_key, b"body", age_s=120),
                b"body",
                "stale-request: request was signed 120",
            ),
            "other method": (
                self._envelope(node.signing_key, b"body", method=USER_METHOD),
                b"body",
                "bad-signature: signature covers '/test.Echo/UserEcho'",
            ),
            "unsigned": (None, b"body", "signature-missing: /test.Echo/NodeEcho requires"),
        }
        _, error = _call(
            server.target,
            node.credentials(),
            NODE_METHOD,
            b"body",
            metadata=((SIGNATURE_HEADER, replayed.to_bytes()),),
        )
        assert error is None
        cases["replayed nonce"] = (replayed, b"body", "replayed-request: nonce was already used")
        for label, (envelope, body, text) in cases.items():
            metadata = () if envelope is None else ((SIGNATURE_HEADER, envelope.to_bytes()),)
            _, error = _call(
                server.target, node.credentials(), NODE_METHOD, body, metadata=metadata
            )
            assert error is not None, label
            _refused(error, grpc.StatusCode.UNAUTHENTICATED, text)
