"""C2SP tlog-checkpoint bodies, signing, cosigning and verification rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from audit.errors import AuditUsageError, BadSignature, MalformedNote
from audit.note import KeyType, NoteSigner, parse_note, parse_verifier_key
from audit.tree import leaf_hash

DERIVED = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "audit" / "note.json").read_text("utf-8")
)["derived"]


def make_signer(name: str = "example.org/log", key_type: KeyType = KeyType.ED25519) -> NoteSigner:
    return NoteSigner(name=name, private_key=Ed25519PrivateKey.generate(), key_type=key_type)


def vector_signers() -> tuple[NoteSigner, NoteSigner]:
    log = NoteSigner.from_seed(DERIVED["log_name"], bytes.fromhex(DERIVED["log_seed"]))
    witness = NoteSigner.from_seed(
        DERIVED["witness_name"], bytes.fromhex(DERIVED["witness_seed"]), KeyType.COSIGNATURE_V1
    )
    return log, witness


CP = Checkpoint(origin="example.org/log", size=20852163, root_hash=leaf_hash(b""))


def test_body_layout():
    body = CP.body()
    assert body == f"example.org/log\n20852163\n{base64.b64encode(leaf_hash(b'')).decode()}\n"
    assert parse_checkpoint(body) == CP
    ext = Checkpoint(origin="o", size=0, root_hash=bytes(32), extensions=("a b", "c"))
    assert parse_checkpoint(ext.body()) == ext


def test_derived_vector_is_reproduced():
    log, witness = vector_signers()
    assert log.verifier_key().encode() == DERIVED["log_verifier_key"]
    assert witness.verifier_key().encode() == DERIVED["witness_verifier_key"]
    cp = Checkpoint(origin=log.name, size=1, root_hash=leaf_hash(b""))
    assert sign_checkpoint(cp, log) == DERIVED["checkpoint_signed"]
    cos = cosign_checkpoint(cp, witness, DERIVED["cosignature_time"])
    full = parse_note(DERIVED["checkpoint_signed"]).with_signatures(cos).encode()
    assert full == DERIVED["checkpoint_cosigned"]
    vc = verify_checkpoint(full, log.verifier_key(), [witness.verifier_key()])
    assert vc.checkpoint == cp
    assert [(c.name, c.timestamp_s) for c in vc.cosignatures] == [
        (witness.name, DERIVED["cosignature_time"])
    ]


def test_sign_verify_round_trip():
    log = make_signer()
    note = sign_checkpoint(CP, log)
    vc = verify_checkpoint(note, log.verifier_key())
    assert vc.checkpoint == CP
    assert vc.cosignatures == () and vc.unknown_signatures == 0


def test_tampered_body_is_refused():
    log = make_signer()
    note = sign_checkpoint(CP, log).replace("20852163", "20852164")
    with pytest.raises(BadSignature, match="size 20852164 does not verify"):
        verify_checkpoint(note, log.verifier_key())


def test_wrong_key_is_refused():
    log, other = make_signer(), make_signer()
    note = sign_checkpoint(CP, other)
    with pytest.raises(BadSignature, match=r"no signature by the log key example.org/log"):
        verify_checkpoint(note, log.verifier_key())


def test_unknown_signatures_are_ignored_and_counted():
    log, stranger = make_signer(), make_signer("stranger.example/key")
    note = parse_note(sign_checkpoint(CP, log))
    note = note.with_signatures(stranger.sign(note.text))
    vc = verify_checkpoint(note.encode(), log.verifier_key())
    assert vc.unknown_signatures == 1


def test_known_witness_with_bad_cosignature_rejects_note():
    log = make_signer()
    witness = make_signer("witness.example/w1", KeyType.COSIGNATURE_V1)
    note = parse_note(sign_checkpoint(CP, log))
    other = Checkpoint(origin=CP.origin, size=CP.size + 1, root_hash=CP.root_hash)
    bad = note.with_signatures(cosign_checkpoint(other, witness, 1_700_000_000))
    with pytest.raises(BadSignature, match=r"witness.example/w1"):
        verify_checkpoint(bad.encode(), log.verifier_key(), [witness.verifier_key()])
    # Unknown to this verifier: ignored, as the signed-note spec requires.
    assert verify_checkpoint(bad.encode(), log.verifier_key()).unknown_signatures == 1


def test_cosignatures_counted_by_distinct_witness():
    log = make_signer()
    w1 = make_signer("w1.example", KeyType.COSIGNATURE_V1)
    w2 = make_signer("w2.example", KeyType.COSIGNATURE_V1)
    note = parse_note(sign_checkpoint(CP, log)).with_signatures(
        cosign_checkpoint(CP, w1, 10), cosign_checkpoint(CP, w2, 11), cosign_checkpoint(CP, w1, 12)
    )
    vc = verify_checkpoint(
        note.encode(), log.verifier_key(), [w1.verifier_key(), w2.verifier_key()]
    )
    assert len(vc.witnesses) == 2


BAD_BODIES = {
    "two lines": ("o\n1\n", "has 2 lines"),
    "leading zero": ("o\n01\nAAAA\n", "not a decimal uint64"),
    "negative": ("o\n-1\nAAAA\n", "not a decimal uint64"),
    "bad root": ("o\n1\n!!\n", "not base64"),
    "short root": ("o\n1\nAAAA\n", "not 32"),
    "empty origin": ("\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "non-empty"),
    "empty extension": ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "non-empty"),
    "no newline": ("o\n1\nAAAA", "end in a newline"),
}


@pytest.mark.parametrize(("body", "message"), BAD_BODIES.values(), ids=list(BAD_BODIES))
def test_bad_bodies(body, message):
    with pytest.raises(MalformedNote, match=message):
        parse_checkpoint(body)


def test_misuse():
    log = make_signer()
    witness = make_signer("w", KeyType.COSIGNATURE_V1)
    with pytest.raises(AuditUsageError, match="type 0x01"):
        sign_checkpoint(CP, witness)
    with pytest.raises(AuditUsageError, match="type 0x04"):
        cosign_checkpoint(CP, log, 1)
    with pytest.raises(AuditUsageError, match="log key must be a type 0x01"):
        verify_checkpoint(sign_checkpoint(CP, log), witness.verifier_key())
    twin = parse_verifier_key(log.verifier_key().encode())
    assert verify_checkpoint(sign_checkpoint(CP, log), twin, [twin]).checkpoint == CP
