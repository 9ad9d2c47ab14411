"""Certificate judgement: every refusal has its own reason, in one place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    CertificateInvalid,
    InvalidReason,
    PeerVerifier,
    RevocationList,
    Role,
    certificate_pem,
    check_certificate,
    expiry_warning,
    verify_certificate,
)
from certs.keys import generate_tls_key


def _self_signed(eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH) -> x509.Certificate:
    key = generate_tls_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "st-marys")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2029, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2031, 1, 1, tzinfo=UTC))
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _bare_ca_signed(pki, *, eku=ExtendedKeyUsageOID.CLIENT_AUTH) -> x509.Certificate:
    """A CA-signed certificate without Greenhouse extensions (made with the CA key)."""
    key = generate_tls_key()
    ca_key = pki.ca._key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
        .issuer_name(pki.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.now - timedelta(days=1))
        .not_valid_after(pki.now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _revoking(*serials: int, pki) -> RevocationList:
    return RevocationList(
        serials=frozenset(serials), this_update=pki.now, next_update=pki.now + timedelta(days=1)
    )


def test_valid_node_and_user(pki, node, scientist) -> None:
    identity = verify_certificate(
        node.cert,
        ca_cert=pki.ca_cert,
        now=pki.now,
        revocations=_revoking(pki=pki),
        roles={Role.NODE},
    )
    assert (identity.kind.value, identity.name, identity.role) == ("node", "st-marys", Role.NODE)
    assert identity.signing_key == node.signing_key.public_key().public_bytes_raw()
    assert identity.serial == node.cert.serial_number
    user = verify_certificate(scientist.cert, ca_cert=pki.ca_cert, now=pki.now)
    assert (user.kind.value, user.name, user.role) == ("user", "alice", Role.DATA_SCIENTIST)


def test_refusals_have_specific_reasons(pki, foreign_pki, node, scientist) -> None:
    expired = pki.issue(
        "late", not_before=pki.now - timedelta(days=30), not_after=pki.now - timedelta(seconds=1)
    )
    future = pki.issue(
        "early", not_before=pki.now + timedelta(hours=1), not_after=pki.now + timedelta(days=2)
    )
    server_key, server = pki.ca.issue_server(hosts=["localhost"], ips=[], actor="t", now=pki.now)
    cases = {
        "foreign CA": (
            foreign_pki.issue("st-marys").cert,
            {},
            InvalidReason.FOREIGN_CA,
            "issued by a foreign CA 'CN=Foreign Federation'",
        ),
        "self-signed": (_self_signed(), {}, InvalidReason.SELF_SIGNED, "is self-signed"),
        "expired": (expired.cert, {}, InvalidReason.EXPIRED, "expired at"),
        "not yet valid": (future.cert, {}, InvalidReason.NOT_YET_VALID, "not valid before"),
        "revoked": (
            node.cert,
            {"revocations": _revoking(node.cert.serial_number, pki=pki)},
            InvalidReason.REVOKED,
            "node st-marys .* is revoked",
        ),
        "wrong role": (
            node.cert,
            {"roles": {Role.DATA_SCIENTIST}},
            InvalidReason.WRONG_ROLE,
            "has role node; allowed: data-scientist",
        ),
        "server as client": (
            server,
            {},
            InvalidReason.WRONG_USAGE,
            "not valid for TLS client authentication",
        ),
        "CA as client": (pki.ca_cert, {}, InvalidReason.WRONG_USAGE, "CA certificate cannot"),
        "no role": (_bare_ca_signed(pki), {}, InvalidReason.MISSING_EXTENSION, "binds no role"),
    }
    for label, (cert, extra, reason, message) in cases.items():
        with pytest.raises(CertificateInvalid, match=message) as info:
            verify_certificate(cert, ca_cert=pki.ca_cert, now=pki.now, **extra)
        assert info.value.reason is reason, label
        result = check_certificate(cert, ca_cert=pki.ca_cert, now=pki.now, **extra)
        assert not result.valid and result.reason is reason, label
    del server_key


def test_check_certificate_valid_message(pki, node) -> None:
    result = check_certificate(node.cert, ca_cert=pki.ca_cert, now=pki.now)
    assert result.valid
    assert result.message.startswith("valid: node st-marys (role node, serial ")


def test_expiry_warning(pki, node) -> None:
    not_after = node.cert.not_valid_after_utc
    assert expiry_warning(node.cert, not_after - timedelta(days=15)) is None
    warning = expiry_warning(node.cert, not_after - timedelta(days=9))
    assert warning is not None and "expires in 9.0 days" in warning
    assert "renew" in warning
    gone = expiry_warning(node.cert, not_after + timedelta(seconds=1))
    assert gone is not None and "expired at" in gone
    assert expiry_warning(node.cert, not_after - timedelta(days=30), within=timedelta(days=31))


def test_peer_verifier_judges_pem_and_caches(pki, foreign_pki, node) -> None:
    verifier = PeerVerifier(pki.ca_cert, cache_size=2)
    pem = certificate_pem(node.cert)
    revocations = _revoking(pki=pki)
    first = verifier.verify_peer(pem, now=pki.now, revocations=revocations)
    assert verifier.verify_peer(pem, now=pki.now, revocations=revocations) is first
    with pytest.raises(CertificateInvalid, match="no client certificate") as info:
        verifier.verify_peer(None, now=pki.now, revocations=revocations)
    assert info.value.reason is InvalidReason.NO_CERTIFICATE
    with pytest.raises(CertificateInvalid) as info:
        verifier.verify_peer(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            now=pki.now,
            revocations=revocations,
        )
    assert info.value.reason is InvalidReason.MALFORMED
    foreign = certificate_pem(foreign_pki.issue("x").cert)
    for _ in range(2):  # cached refusals are refused again with the same reason
        with pytest.raises(CertificateInvalid) as info:
            verifier.verify_peer(foreign, now=pki.now, revocations=revocations)
        assert info.value.reason is InvalidReason.FOREIGN_CA
    # the time-dependent checks are not cached
    with pytest.raises(CertificateInvalid) as info:
        verifier.verify_peer(pem, now=node.cert.not_valid_after_utc, revocations=revocations)
    assert info.value.reason is InvalidReason.EXPIRED
    with pytest.raises(CertificateInvalid) as info:
        verifier.verify_peer(
            pem, now=pki.now, revocations=_revoking(node.cert.serial_number, pki=pki)
        )
    assert info.value.reason is InvalidReason.REVOKED


def test_expired_ca_refuses_everything(pki, node) -> None:
    with pytest.raises(CertificateInvalid, match="federation CA certificate is not valid now"):
        verify_certificate(
            node.cert, ca_cert=pki.ca_cert, now=pki.ca_cert.not_valid_after_utc + timedelta(days=1)
        )
