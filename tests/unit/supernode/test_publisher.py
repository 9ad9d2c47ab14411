"""Publisher keys and bundle signatures: signed bundles verify, anything else is refused."""

from __future__ import annotations

import json
import stat

import pytest
from policy_harness import make_app

from appliance.bundle import build_bundle
from appliance.supernode.publisher import (
    BundleSignature,
    PublisherError,
    PublisherKey,
    generate_publisher_key,
    load_publisher_key,
    load_publisher_signing_key,
    parse_bundle_digest,
    parse_bundle_signature,
    sign_bundle,
    verify_bundle_signature,
)
from certs import KeyFileError, KeyPermissionError


@pytest.fixture
def keys(tmp_path):
    private, public, key = generate_publisher_key(tmp_path / "publisher")
    return load_publisher_signing_key(private), load_publisher_key(public), key


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path):
    private, public, key = generate_publisher_key(tmp_path / "p")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert load_publisher_key(public) == key
    assert len(key.fingerprint) == 64
    with pytest.raises(KeyFileError, match="already exists"):
        generate_publisher_key(tmp_path / "p")


def test_group_readable_private_key_is_refused(tmp_path):
    private, _, _ = generate_publisher_key(tmp_path / "p")
    private.chmod(0o640)
    with pytest.raises(KeyPermissionError, match="accessible by group or others"):
        load_publisher_signing_key(private)


def test_signed_bundle_verifies(tmp_path, keys):
    signing_key, public, _ = keys
    bundle = build_bundle(make_app(tmp_path))
    signature = parse_bundle_signature(sign_bundle(signing_key, bundle.sha256).to_bytes())
    assert verify_bundle_signature(signature, bundle.sha256, [public]) == public


def test_tampered_bundle_is_refused(tmp_path, keys):
    signing_key, public, _ = keys
    app = make_app(tmp_path)
    signature = sign_bundle(signing_key, build_bundle(app).sha256)
    (app / "pkg" / "__init__.py").write_text("import os; os.system('curl evil')\n")
    tampered = build_bundle(app).sha256
    with pytest.raises(PublisherError, match=r"signature is for bundle sha256:\w+\.\.\., not"):
        verify_bundle_signature(signature, tampered, [public])


def test_tampered_signature_is_refused(keys):
    signing_key, public, _ = keys
    digest = "ab" * 32
    good = sign_bundle(signing_key, digest)
    flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    forged = BundleSignature(bundle_sha256=digest, publisher=good.publisher, signature=flipped)
    with pytest.raises(PublisherError, match="signature does not verify with publisher"):
        verify_bundle_signature(forged, digest, [public])
    # a signature moved to another bundle's digest does not verify either
    moved = BundleSignature(
        bundle_sha256="cd" * 32, publisher=good.publisher, signature=good.signature
    )
    with pytest.raises(PublisherError, match="does not verify"):
        verify_bundle_signature(moved, "cd" * 32, [public])


def test_wrong_publisher_is_refused(tmp_path, keys):
    signing_key, _, _ = keys
    _, other_public, _ = generate_publisher_key(tmp_path / "other")
    signature = sign_bundle(signing_key, "ab" * 32)
    with pytest.raises(PublisherError, match="which this site does not trust"):
        verify_bundle_signature(signature, "ab" * 32, [load_publisher_key(other_public)])
    with pytest.raises(PublisherError, match="does not trust"):
        verify_bundle_signature(signature, "ab" * 32, [])


def test_untrusted_key_claiming_a_trusted_fingerprint_is_refused(tmp_path, keys):
    _, public, _ = keys
    private, _, _ = generate_publisher_key(tmp_path / "mallory")
    real = sign_bundle(load_publisher_signing_key(private), "ab" * 32)
    claimed = BundleSignature(
        bundle_sha256="ab" * 32, publisher=public.fingerprint, signature=real.signature
    )
    with pytest.raises(PublisherError, match="does not verify"):
        verify_bundle_signature(claimed, "ab" * 32, [public])


def _file(**changes):
    body = {
        "format": "greenhouse-app-signature/v1",
        "bundle": "sha256:" + "ab" * 32,
        "publisher": "cd" * 32,
        "signature": "A" * 86 + "==",
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


MALFORMED = {
    "not json": (b"{", "not UTF-8 JSON"),
    "not utf-8": (b"\xff", "not UTF-8 JSON"),
    "a list": (b"[]", "exactly the fields"),
    "missing field": (_file(publisher=None), "exactly the fields"),
    "extra field": (_file(extra="x"), "exactly the fields"),
    "wrong format": (_file(format="v0"), "is not 'greenhouse-app-signature/v1'"),
    "number field": (_file(publisher=5), "fields must be strings"),
    "bad base64": (_file(signature="!!"), "not valid base64"),
    "short signature": (_file(signature="AAAA"), "signature is 64 bytes, got 3"),
    "bad digest": (_file(bundle="sha256:12"), "is not a bundle digest"),
    "bad publisher": (_file(publisher="xyz"), "64-digit hex fingerprint"),
    "too large": (b" " * 5000, "more than 4096"),
}


@pytest.mark.parametrize(("data", "error"), MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_signature_files_are_refused(data, error):
    with pytest.raises(PublisherError, match=error):
        parse_bundle_signature(data)


def test_signature_file_round_trips(keys):
    signing_key, _, key = keys
    signature = sign_bundle(signing_key, "sha256:" + "AB" * 32)
    assert signature.bundle_sha256 == "ab" * 32
    assert signature.publisher == key.fingerprint
    assert parse_bundle_signature(signature.to_bytes()) == signature


def test_digest_spellings():
    assert parse_bundle_digest("sha256:" + "AB" * 32) == "ab" * 32
    for bad in ("", "sha256:", "sha512:" + "ab" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(PublisherError, match="not a bundle digest"):
            parse_bundle_digest(bad)


def test_public_key_files_must_hold_ed25519_keys(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "ec.pub"
    path.write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(PublisherError, match="not an Ed25519 public key"):
        load_publisher_key(path)
    with pytest.raises(PublisherError, match="cannot read publisher key"):
        load_publisher_key(tmp_path / "absent.pub")
    with pytest.raises(PublisherError, match="32 bytes"):
        PublisherKey(b"short")
