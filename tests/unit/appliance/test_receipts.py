"""Run manifests and signed receipts: canonical bytes, strict parsing, real signatures."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.receipts import (
    RECEIPT_SIGNATURE_METHOD,
    Decision,
    Receipt,
    ReceiptInvalid,
    RunManifest,
    SignedReceipt,
)
from certs.signing import EnvelopeKind, EnvelopeSigner

BUNDLE = "ab" * 32
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()


def manifest(config: str = '{"lr":0.1,"rounds":3}') -> RunManifest:
    return RunManifest(run_id=2**63 - 1, bundle_sha256=BUNDLE, run_config_json=config)


def receipt(**changes: object) -> Receipt:
    fields: dict[str, object] = {
        "run_id": 2**63 - 1,
        "node": "st-marys",
        "decision": Decision.ACCEPTED,
        "manifest_sha256": manifest().sha256,
        "policy_sha256": "cd" * 32,
        "reason": "",
        "decided_by": "dr-who",
    }
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def test_the_manifest_hash_covers_the_app_and_the_exact_run_config():
    base = manifest()
    assert base.sha256 == hashlib.sha256(base.canonical()).hexdigest()
    assert base.sha256 == manifest().sha256  # deterministic
    assert manifest('{"lr":0.2,"rounds":3}').sha256 != base.sha256
    assert dataclasses.replace(base, bundle_sha256="cd" * 32).sha256 != base.sha256
    assert dataclasses.replace(base, run_id=7).sha256 != base.sha256
    assert b'"run_id":"9223372036854775807"' in base.canonical()  # 64-bit id as text


def test_a_receipt_round_trips_through_its_canonical_bytes():
    original = receipt(decision=Decision.REFUSED, reason="not on the allowlist: é")
    assert Receipt.from_bytes(original.to_bytes()) == original


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b.replace(b'","', b'", "', 1), "canonical form"),
        (lambda b: b.replace(b'"receipt":1', b'"receipt":2'), "unknown receipt version"),
        (lambda b: b.replace(b'{"decided_by"', b'{"extra":"x","decided_by"'), "exactly the fields"),
        (lambda b: b.replace(b'"accepted"', b'"maybe"'), "bad value"),
        (lambda b: b.replace(b'"decided_by":"dr-who"', b'"decided_by":7'), "bad value"),
        (lambda b: b"[1,2]", "exactly the fields"),
        (lambda b: b"{", "not valid JSON"),
        (lambda b: b + b" " * 9000, "limit"),
    ],
)
def test_malformed_receipts_are_refused_with_the_reason(mangle, message):
    with pytest.raises(ReceiptInvalid, match=message):
        Receipt.from_bytes(mangle(receipt().to_bytes()))


def test_an_overlong_reason_is_cut_before_signing():
    long = receipt(reason="x" * 5000)
    assert len(long.reason) == 1024
    assert Receipt.from_bytes(long.to_bytes()) == long


def test_a_signed_receipt_verifies_with_the_nodes_key_only():
    signed = receipt().sign(EnvelopeSigner(KEY))
    parsed, envelope = signed.verify(PUBLIC)
    assert parsed == receipt()
    assert envelope.kind is EnvelopeKind.RECEIPT
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ReceiptInvalid, match="receipt signature refused"):
        signed.verify(other)


def test_a_changed_decision_breaks_the_signature():
    signed = receipt(decision=Decision.REFUSED, reason="no").sign(EnvelopeSigner(KEY))
    accepted = receipt(decision=Decision.ACCEPTED).to_bytes()
    with pytest.raises(ReceiptInvalid, match="receipt signature refused"):
        SignedReceipt(accepted, signed.signature).verify(PUBLIC)


def test_a_reply_signature_never_passes_as_a_receipt():
    body = receipt().to_bytes()
    reply = EnvelopeSigner(KEY).sign(
        kind=EnvelopeKind.REPLY, method=RECEIPT_SIGNATURE_METHOD, body=body
    )
    with pytest.raises(ReceiptInvalid, match="expected a receipt"):
        SignedReceipt(body, reply.to_bytes()).verify(PUBLIC)
    with pytest.raises(ReceiptInvalid, match="signature refused"):
        SignedReceipt(body, b"short").verify(PUBLIC)
