"""Signed tree heads as C2SP ``tlog-checkpoint`` signed notes, and witness cosignatures.

A checkpoint body (c2sp.org/tlog-checkpoint §Note text) is::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros>\\n
    <base64 of the 32-byte RFC 6962 root hash>\\n
    [<extension line>\\n ...]

signed as a note (:mod:`audit.note`) by the log's Ed25519 key (type 0x01) and,
optionally, cosigned by witnesses (c2sp.org/tlog-cosignature, type 0x04).

:func:`verify_checkpoint` applies the signed-note rules: signatures from
unknown keys are ignored; a signature from a known key that fails rejects the
whole note; the log's own signature is required. It returns a
:class:`VerifiedCheckpoint`, the only way this package hands out a checkpoint
it has checked. Whether the root matches any entries is :mod:`audit.verify`'s job.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from audit.errors import AuditUsageError, BadSignature, MalformedNote
from audit.note import (
    KeyType,
    Note,
    NoteSignature,
    NoteSigner,
    VerifierKey,
    parse_note,
    parse_verifier_key,
)
from audit.tree import HASH_SIZE

__all__ = [
    "Checkpoint",
    "Cosignature",
    "VerifiedCheckpoint",
    "VerifierKey",
    "cosign_checkpoint",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_checkpoint",
    "verify_checkpoint",
]

_SIZE = re.compile(r"(0|[1-9][0-9]{0,19})\Z")
_MAX_SIZE = 2**64 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A tree head: the log's origin, the tree size and its root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedNote("checkpoint origin must be one non-empty line")
        if type(self.size) is not int or not 0 <= self.size <= _MAX_SIZE:
            raise MalformedNote(f"checkpoint size {self.size!r} is not a uint64")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedNote(f"checkpoint root is {len(self.root_hash)} bytes, not 32")
        if any(not x or "\n" in x for x in self.extensions):
            raise MalformedNote("checkpoint extension lines must be non-empty single lines")

    def body(self) -> str:
        """Return the note text: origin, size, base64 root, extensions, each + newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, not the whole signed note).

    Raises:
        MalformedNote: fewer than three lines, a bad size or root, an empty line.
    """
    if not text.endswith("\n"):
        raise MalformedNote("checkpoint body must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNote(f"checkpoint body has {len(lines)} lines, needs at least 3")
    if not _SIZE.match(lines[1]):
        raise MalformedNote(f"checkpoint size line {lines[1][:24]!r} is not a decimal uint64")
    try:
        root = base64.b64decode(lines[2].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise MalformedNote("checkpoint root line is not base64") from exc
    if base64.b64encode(root).decode("ascii") != lines[2]:
        raise MalformedNote("checkpoint root line is not canonical base64")
    return Checkpoint(
        origin=lines[0], size=int(lines[1]), root_hash=root, extensions=tuple(lines[3:])
    )


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """Sign a checkpoint with the log's key and return the signed note text.

    Raises:
        AuditUsageError: ``signer`` is not a plain Ed25519 (type 0x01) signer.
    """
    if signer.key_type is not KeyType.ED25519:
        raise AuditUsageError("a log signs checkpoints with a type 0x01 Ed25519 key")
    body = checkpoint.body()
    return Note(text=body, signatures=(signer.sign(body),)).encode()


def cosign_checkpoint(
    checkpoint: Checkpoint, cosigner: NoteSigner, timestamp_s: int
) -> NoteSignature:
    """Return a witness's cosignature/v1 over ``checkpoint`` at ``timestamp_s``.

    A witness calls this only after it has verified the log's signature and the
    consistency with the largest tree head it saw before; this function signs.

    Raises:
        AuditUsageError: ``cosigner`` is not a type 0x04 key, or a bad timestamp.
    """
    if cosigner.key_type is not KeyType.COSIGNATURE_V1:
        raise AuditUsageError("a witness cosigns with a type 0x04 (cosignature/v1) key")
    return cosigner.sign(checkpoint.body(), timestamp_s=timestamp_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cosignature:
    """A verified witness cosignature."""

    name: str
    key_id: bytes
    timestamp_s: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified, with its verified cosignatures."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[Cosignature, ...]
    unknown_signatures: int

    @property
    def witnesses(self) -> frozenset[str]:
        """Distinct witness keys (``name+keyid``) that cosigned."""
        return frozenset(f"{c.name}+{c.key_id.hex()}" for c in self.cosignatures)


def _key_table(
    log_key: VerifierKey, witness_keys: Sequence[VerifierKey]
) -> dict[tuple[str, bytes], VerifierKey]:
    table: dict[tuple[str, bytes], VerifierKey] = {}
    for key in (log_key, *witness_keys):
        ident = (key.name, key.key_id)
        if ident in table and table[ident] != key:
            raise AuditUsageError(f"two different keys share the name and ID {key.encode()}")
        table[ident] = key
    return table


def _check_signatures(
    note: Note, size: int, keys: dict[tuple[str, bytes], VerifierKey], log_key: VerifierKey
) -> tuple[bool, tuple[Cosignature, ...], int]:
    """Verify every signature by a known key; return (log signed, cosignatures, unknown)."""
    signed_by_log = False
    cosigs: dict[tuple[str, bytes], Cosignature] = {}
    unknown = 0
    for sig in note.signatures:
        key = keys.get((sig.name, sig.key_id))
        if key is None:
            unknown += 1
            continue
        try:
            timestamp = sig.verify(key, note.text)
        except (InvalidSignature, MalformedNote) as exc:
            raise BadSignature(
                f"signature by {sig.name}+{sig.key_id.hex()} on the tree head of size "
                f"{size} does not verify",
                tree_size=size,
            ) from exc
        if key == log_key:
            signed_by_log = True
        else:
            ident = (sig.name, sig.key_id)
            cosigs[ident] = Cosignature(
                name=sig.name, key_id=sig.key_id, timestamp_s=timestamp or 0
            )
    return signed_by_log, tuple(cosigs.values()), unknown


def verify_checkpoint(
    note_text: str | bytes,
    log_key: VerifierKey,
    witness_keys: Sequence[VerifierKey] = (),
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint against the log key and optional witness keys.

    Args:
        note_text: the signed note.
        log_key: the log's type 0x01 verifier key; its signature is required.
        witness_keys: witness keys whose cosignatures are checked and reported.

    Returns:
        The verified checkpoint.

    Raises:
        MalformedNote: the note or checkpoint body does not parse.
        BadSignature: a known key's signature fails, or the log key did not sign.
        AuditUsageError: ``log_key`` is not type 0x01, or two keys collide.
    """
    if log_key.key_type is not KeyType.ED25519:
        raise AuditUsageError("the log key must be a type 0x01 Ed25519 verifier key")
    note = parse_note(note_text)
    checkpoint = parse_checkpoint(note.text)
    keys = _key_table(log_key, witness_keys)
    signed_by_log, cosigs, unknown = _check_signatures(note, checkpoint.size, keys, log_key)
    if not signed_by_log:
        raise BadSignature(
            f"tree head of size {checkpoint.size} carries no signature by the log key "
            f"{log_key.name}+{log_key.key_id.hex()}",
            tree_size=checkpoint.size,
        )
    return VerifiedCheckpoint(
        checkpoint=checkpoint,
        note=note,
        cosignatures=cosigs,
        unknown_signatures=unknown,
    )
