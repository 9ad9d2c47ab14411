"""C2SP signed notes: Ed25519 signing keys, verifier keys and signature lines.

Implements https://c2sp.org/signed-note (the format of Go's
``golang.org/x/mod/sumdb/note``) for two signature types:

* ``0x01`` Ed25519 over the note text;
* ``0x04`` timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature,
  ``cosignature/v1``): the signed message is ``"cosignature/v1\\ntime <T>\\n"``
  followed by the note text, and the signature bytes are
  ``u64be(T) || ed25519_signature``.

Byte layouts (``||`` is concatenation, base64 is RFC 4648 §4 with padding)::

    key ID        = SHA-256(name || 0x0A || type || 32-byte public key)[:4]
    verifier key  = name "+" hex8(key ID) "+" base64(type || public key)
    note          = text (ends in "\\n") || "\\n" || signature line+
    signature line= "\\u2014 " name " " base64(key ID || signature bytes) "\\n"

This module parses and formats notes and checks single signatures. Which keys
must have signed, and what a body means, is decided by :mod:`audit.checkpoint`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.errors import AuditUsageError, MalformedNote

__all__ = [
    "MAX_SIGNATURES",
    "KeyType",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "VerifierKey",
    "compute_key_id",
    "cosignature_message",
    "parse_note",
    "parse_signature_line",
    "parse_verifier_key",
]

MAX_SIGNATURES = 100
EM_DASH = "\u2014"
_COSIG_HEADER = "cosignature/v1\n"
_MAX_TIMESTAMP = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class KeyType(IntEnum):
    """Signature type identifier bytes (c2sp.org/signed-note §Signature types)."""

    ED25519 = 0x01
    COSIGNATURE_V1 = 0x04


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or _CONTROL.search(name):
        raise MalformedNote(f"key name {name!r} is empty or holds a space, '+' or control")


def compute_key_id(name: str, key_type: KeyType, public_key: bytes) -> bytes:
    """Return the 4-byte key ID ``SHA-256(name || 0x0A || type || public key)[:4]``."""
    data = name.encode("utf-8") + b"\n" + bytes([key_type]) + public_key
    return hashlib.sha256(data).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedNote(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedNote(f"{what} is not canonical base64")
    return raw


def cosignature_message(text: str, timestamp_s: int) -> bytes:
    """Return the cosignature/v1 signed message for note text ``text`` at ``timestamp_s``."""
    return f"{_COSIG_HEADER}time {timestamp_s}\n{text}".encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierKey:
    """A public key with its name and signature type (a C2SP "vkey")."""

    name: str
    key_type: KeyType
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.public_key) != 32:
            raise MalformedNote(f"Ed25519 public key is {len(self.public_key)} bytes, not 32")
        object.__setattr__(self, "key_type", KeyType(self.key_type))

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return compute_key_id(self.name, self.key_type, self.public_key)

    def encode(self) -> str:
        """Return ``name+hex8(key ID)+base64(type || public key)``."""
        material = base64.b64encode(bytes([self.key_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """Check a signature's bytes (after the key ID) over note text ``text``.

        Returns:
            The cosignature timestamp for type 0x04, ``None`` for type 0x01.

        Raises:
            MalformedNote: the signature bytes have the wrong length.
            InvalidSignature: (from ``cryptography``) the signature is wrong;
                callers translate it.
        """
        public = Ed25519PublicKey.from_public_bytes(self.public_key)
        if self.key_type is KeyType.ED25519:
            if len(signature) != 64:
                raise MalformedNote(f"Ed25519 signature is {len(signature)} bytes, not 64")
            public.verify(signature, text.encode("utf-8"))
            return None
        if len(signature) != 72:
            raise MalformedNote(f"cosignature is {len(signature)} bytes, not 8 + 64")
        (timestamp,) = struct.unpack(">Q", signature[:8])
        if timestamp > _MAX_TIMESTAMP:
            raise MalformedNote(f"cosignature timestamp {timestamp} exceeds 2**63 - 1")
        public.verify(signature[8:], cosignature_message(text, timestamp))
        return int(timestamp)


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse ``name+hex8+base64(type || key)`` and check the key ID.

    Raises:
        MalformedNote: wrong shape, unknown type, wrong length or key ID.
    """
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise MalformedNote("verifier key is not name+<8 hex>+<base64>")
    raw = _b64decode(parts[2], "verifier key material")
    if len(raw) != 33:
        raise MalformedNote(f"verifier key material is {len(raw)} bytes, expected 33")
    try:
        key_type = KeyType(raw[0])
    except ValueError as exc:
        raise MalformedNote(f"unsupported key type 0x{raw[0]:02x}") from exc
    key = VerifierKey(name=parts[0], key_type=key_type, public_key=raw[1:])
    if key.key_id.hex() != parts[1]:
        raise MalformedNote(
            f"verifier key {parts[0]} claims key ID {parts[1]}, computed {key.key_id.hex()}"
        )
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSigner:
    """An Ed25519 private key with its key name and signature type.

    ``key_type`` is :attr:`KeyType.ED25519` for a log, and
    :attr:`KeyType.COSIGNATURE_V1` for a witness.
    """

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    key_type: KeyType = KeyType.ED25519

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise AuditUsageError("private_key must be a cryptography Ed25519PrivateKey")

    @classmethod
    def from_seed(cls, name: str, seed: bytes, key_type: KeyType = KeyType.ED25519) -> NoteSigner:
        """Build a signer from a 32-byte Ed25519 seed (e.g. ``bytes(nacl SigningKey)``)."""
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(name=name, private_key=key, key_type=key_type)

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def verifier_key(self) -> VerifierKey:
        """The matching :class:`VerifierKey`."""
        return VerifierKey(
            name=self.name, key_type=self.key_type, public_key=self.public_key_bytes()
        )

    def sign(self, text: str, *, timestamp_s: int | None = None) -> NoteSignature:
        """Sign note text (type 0x01), or cosign it at ``timestamp_s`` (type 0x04).

        Raises:
            AuditUsageError: a timestamp is missing for, or given to, the wrong type.
        """
        key_id = compute_key_id(self.name, self.key_type, self.public_key_bytes())
        if self.key_type is KeyType.ED25519:
            if timestamp_s is not None:
                raise AuditUsageError("a type 0x01 signature carries no timestamp")
            raw = self.private_key.sign(text.encode("utf-8"))
        else:
            if timestamp_s is None or not 0 <= timestamp_s <= _MAX_TIMESTAMP:
                raise AuditUsageError("a cosignature needs a timestamp in 0..2**63-1")
            signature = self.private_key.sign(cosignature_message(text, timestamp_s))
            raw = struct.pack(">Q", timestamp_s) + signature
        return NoteSignature(name=self.name, key_id=key_id, signature=raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.key_id) != 4 or not self.signature:
            raise MalformedNote(f"signature by {self.name} has a bad key ID or is empty")

    def line(self) -> str:
        """Return ``"— name base64(key ID || signature)\\n"``."""
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{EM_DASH} {self.name} {blob}\n"

    def matches(self, key: VerifierKey) -> bool:
        """True when the name and key ID identify ``key``."""
        return self.name == key.name and self.key_id == key.key_id

    def verify(self, key: VerifierKey, text: str) -> int | None:
        """Verify against ``key``; see :meth:`VerifierKey.verify`. Returns the timestamp.

        Raises:
            MalformedNote: wrong signature length for the key type.
            InvalidSignature: the signature does not verify.
        """
        return key.verify(text, self.signature)


def parse_signature_line(line: str) -> NoteSignature:
    """Parse one signature line (without its newline).

    Raises:
        MalformedNote: not ``"— <name> <base64>"`` or too short.
    """
    if not line.startswith(EM_DASH + " "):
        raise MalformedNote(f"signature line does not start with an em dash: {line[:40]!r}")
    parts = line[2:].split(" ")
    if len(parts) != 2:
        raise MalformedNote("signature line is not '— <name> <base64>'")
    raw = _b64decode(parts[1], f"signature by {parts[0]}")
    if len(raw) < 5:
        raise MalformedNote(f"signature by {parts[0]} is shorter than 5 bytes")
    return NoteSignature(name=parts[0], key_id=raw[:4], signature=raw[4:])


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """A signed note: text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not self.text.endswith("\n") or _CONTROL.search(self.text):
            raise MalformedNote("note text must end in a newline and hold no controls")
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedNote(f"note has more than {MAX_SIGNATURES} signatures")

    def encode(self) -> str:
        """Return the note as text: text, blank line, signature lines."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, *signatures: NoteSignature) -> Note:
        """Return a copy with ``signatures`` added, replacing any by the same key."""
        new = {(s.name, s.key_id) for s in signatures}
        kept = tuple(s for s in self.signatures if (s.name, s.key_id) not in new)
        return Note(text=self.text, signatures=kept + tuple(signatures))


def parse_note(data: str | bytes) -> Note:
    """Parse a signed note without verifying any signature.

    Raises:
        MalformedNote: not UTF-8, control characters, no blank line separator,
            no signatures or a malformed signature line.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedNote("note is not UTF-8") from exc
    if _CONTROL.search(data):
        raise MalformedNote("note holds a control character other than newline")
    split = data.rfind("\n\n")
    if split < 0 or not data.endswith("\n"):
        raise MalformedNote("note has no blank line before its signatures")
    text, sig_block = data[: split + 1], data[split + 2 :]
    lines = sig_block[:-1].split("\n") if sig_block else []
    if not lines:
        raise MalformedNote("note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(f"note has more than {MAX_SIGNATURES} signatures")
    return Note(text=text, signatures=tuple(parse_signature_line(x) for x in lines))
