"""C2SP signed notes: Go interop vector, key strings, parsing and its error paths."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.errors import AuditUsageError, MalformedNote
from audit.note import (
    KeyType,
    Note,
    NoteSignature,
    NoteSigner,
    VerifierKey,
    compute_key_id,
    cosignature_message,
    parse_note,
    parse_signature_line,
    parse_verifier_key,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "audit" / "note.json").read_text("utf-8")
)
GO = VECTORS["go_sumdb_note"]


def go_signer() -> NoteSigner:
    # PRIVATE+KEY+<name>+<hex id>+base64(0x01 || 32-byte seed); base64 may hold '+'.
    _, _, name, _, material = GO["signer_key"].split("+", 4)
    raw = base64.b64decode(material)
    assert raw[0] == KeyType.ED25519
    return NoteSigner.from_seed(name, raw[1:])


def test_go_signer_reproduces_verifier_key_and_signature():
    signer = go_signer()
    assert signer.verifier_key().encode() == GO["verifier_key"]
    note = Note(text=GO["text"], signatures=(signer.sign(GO["text"]),))
    assert note.encode() == GO["signed"]


def test_go_signature_verifies_and_other_key_too():
    note = parse_note(GO["signed"] + GO["other_signature_line"])
    peter = parse_verifier_key(GO["verifier_key"])
    enoch = parse_verifier_key(GO["other_verifier_key"])
    assert note.text == GO["text"]
    assert [s.matches(peter) for s in note.signatures] == [True, False]
    assert note.signatures[0].verify(peter, note.text) is None
    assert note.signatures[1].verify(enoch, note.text) is None
    with pytest.raises(InvalidSignature):
        note.signatures[1].verify(peter, note.text)


def test_key_id_layout():
    key = parse_verifier_key(GO["verifier_key"])
    assert key.key_id == bytes.fromhex("c74f20a3")
    assert compute_key_id(key.name, KeyType.ED25519, key.public_key) == key.key_id
    assert compute_key_id(key.name, KeyType.COSIGNATURE_V1, key.public_key) != key.key_id


def test_cosignature_round_trip_and_layout():
    witness = NoteSigner(
        name="witness.example/w1",
        private_key=Ed25519PrivateKey.generate(),
        key_type=KeyType.COSIGNATURE_V1,
    )
    sig = witness.sign("body\n", timestamp_s=1_700_000_000)
    assert len(sig.signature) == 8 + 64
    assert sig.signature[:8] == (1_700_000_000).to_bytes(8, "big")
    material = witness.verifier_key().encode().split("+", 2)[2]
    assert base64.b64decode(material)[0] == 0x04
    assert sig.verify(witness.verifier_key(), "body\n") == 1_700_000_000
    assert cosignature_message("body\n", 5) == b"cosignature/v1\ntime 5\nbody\n"
    with pytest.raises(InvalidSignature):
        sig.verify(witness.verifier_key(), "other\n")


def test_note_replaces_signature_by_same_key():
    signer = go_signer()
    old = NoteSignature(name=signer.name, key_id=bytes.fromhex("c74f20a3"), signature=b"x" * 64)
    note = Note(text=GO["text"], signatures=(old,)).with_signatures(signer.sign(GO["text"]))
    assert note.encode() == GO["signed"]


BAD_VKEYS = {
    "two parts": ("PeterNeumann+c74f20a3", "not name\\+<8 hex>"),
    "uppercase hex": (
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "8 hex",
    ),
    "bad base64": ("PeterNeumann+c74f20a3+!!!!", "not valid base64"),
    "short key": ("PeterNeumann+c74f20a3+ARpc", "expected 33"),
    "unknown type": (
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "unsupported key type 0x65",
    ),
    "wrong key id": (
        "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "claims key ID 00000000",
    ),
    "space in name": (
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "holds a space",
    ),
}


@pytest.mark.parametrize(("text", "message"), BAD_VKEYS.values(), ids=list(BAD_VKEYS))
def test_bad_verifier_keys(text, message):
    with pytest.raises(MalformedNote, match=message):
        parse_verifier_key(text)


BAD_NOTES = {
    "no signatures": (GO["text"], "no blank line"),
    "blank only": (GO["text"] + "\n", "no signature lines"),
    "no final newline": (GO["signed"][:-1], "no blank line"),
    "control char": ("\x01" + GO["signed"], "control character"),
    "not utf-8": (b"\xff" + GO["signed"].encode(), "not UTF-8"),
    "hyphen not em dash": (GO["signed"].replace("\u2014", "-"), "em dash"),
    "name with space": (
        GO["signed"].replace("PeterNeumann", "Peter Neumann"),
        "not '— <name> <base64>'",
    ),
    "trailing junk": (GO["signed"] + "Unexpected line.\n", "em dash"),
    "short signature": (GO["text"] + "\n\u2014 x AAAA\n", "shorter than 5 bytes"),
    "non-canonical base64": (GO["text"] + "\n\u2014 x AAAAAB==\n", "base64"),
    "too many": (GO["signed"] + GO["signed"].split("\n\n")[1] * 100, "more than 100"),
}


@pytest.mark.parametrize(("data", "message"), BAD_NOTES.values(), ids=list(BAD_NOTES))
def test_bad_notes(data, message):
    with pytest.raises(MalformedNote, match=message):
        parse_note(data)


def test_signer_misuse():
    key = Ed25519PrivateKey.generate()
    with pytest.raises(AuditUsageError, match="carries no timestamp"):
        NoteSigner(name="log", private_key=key).sign("x\n", timestamp_s=1)
    witness = NoteSigner(name="w", private_key=key, key_type=KeyType.COSIGNATURE_V1)
    with pytest.raises(AuditUsageError, match="needs a timestamp"):
        witness.sign("x\n")
    with pytest.raises(AuditUsageError, match="Ed25519PrivateKey"):
        NoteSigner(name="log", private_key="not a key")  # type: ignore[arg-type]
    with pytest.raises(MalformedNote, match="holds a space"):
        NoteSigner(name="a log", private_key=key)
    with pytest.raises(MalformedNote, match="not 32"):
        VerifierKey(name="log", key_type=KeyType.ED25519, public_key=b"short")
    with pytest.raises(MalformedNote, match="must end in a newline"):
        Note(text="no newline", signatures=())
    with pytest.raises(MalformedNote, match="bad key ID"):
        NoteSignature(name="x", key_id=b"abc", signature=b"s")
    with pytest.raises(MalformedNote, match="is not '— <name> <base64>'"):
        parse_signature_line("\u2014 only-a-name")


def test_wrong_signature_length_is_malformed():
    key = parse_verifier_key(GO["verifier_key"])
    with pytest.raises(MalformedNote, match="not 64"):
        key.verify("x\n", b"\x00" * 10)
    witness = VerifierKey(name="w", key_type=KeyType.COSIGNATURE_V1, public_key=key.public_key)
    with pytest.raises(MalformedNote, match=r"not 8 \+ 64"):
        witness.verify("x\n", b"\x00" * 64)
    with pytest.raises(MalformedNote, match=r"exceeds 2\*\*63 - 1"):
        witness.verify("x\n", b"\xff" * 72)
