"""A site as a witness of the SuperLink's log (c2sp.org/tlog-cosignature, issue 7).

A witness remembers the largest tree head it cosigned. Given a new signed tree
head and a consistency proof from the remembered one, :meth:`Witness.cosign`
checks, in order:

1. the log's signature, with the log key the site was configured with, and
   that the origin is the expected one;
2. the new tree head is not smaller than the remembered one
   (:class:`~audit.errors.LogRolledBack` otherwise);
3. it extends the remembered one: same root at the same size, or a valid
   RFC 9162 consistency proof (:class:`~audit.errors.LogForked` otherwise);

and only then returns a ``cosignature/v1`` over the checkpoint, timestamped
from the injected clock, together with the witness state to remember next. A
log that was rolled back or forked therefore cannot collect the cosignatures
of sites that saw the old one.

Pure logic (STYLE.md §6): no network, files or database; the key and the
clock are injected and the caller persists :attr:`Cosigned.witness` (the site
log's ``checkpoint.seen`` entries hold the same evidence). With no remembered
tree head the first one is trusted on first use; configure ``last`` from the
site's records to avoid that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from audit.checkpoint import Checkpoint, VerifiedCheckpoint, cosign_checkpoint, verify_checkpoint
from audit.errors import (
    AuditUsageError,
    BadSignature,
    LogForked,
    LogRolledBack,
    ProofError,
)
from audit.note import KeyType, NoteSignature, NoteSigner, VerifierKey
from audit.tree import verify_consistency

__all__ = ["Cosigned", "Witness"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cosigned:
    """A successful cosigning: the signature, the checkpoint and the next witness state."""

    checkpoint: Checkpoint
    signature: NoteSignature
    witness: Witness

    def note(self, note_text: str | bytes) -> str:
        """Return ``note_text`` (the log's signed note) with this cosignature added."""
        verified = verify_checkpoint(note_text, self.witness.log_key)
        return verified.note.with_signatures(self.signature).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Witness:
    """A witness's configuration and its last cosigned tree head (immutable).

    Attributes:
        signer: the witness's type 0x04 (cosignature/v1) key.
        log_key: the SuperLink's audit verifier key (type 0x01).
        clock: returns aware datetimes; cosignature timestamps come only from here.
        origin: the log's origin line (default: the log key's name).
        last: the largest tree head cosigned so far, or None.
    """

    signer: NoteSigner = field(repr=False)
    log_key: VerifierKey
    clock: Callable[[], datetime] = field(repr=False)
    origin: str | None = None
    last: Checkpoint | None = None

    def __post_init__(self) -> None:
        if self.signer.key_type is not KeyType.COSIGNATURE_V1:
            raise AuditUsageError("a witness cosigns with a type 0x04 (cosignature/v1) key")
        if self.log_key.key_type is not KeyType.ED25519:
            raise AuditUsageError("the log key must be a type 0x01 Ed25519 verifier key")
        if self.last is not None and self.last.origin != self.expected_origin:
            raise AuditUsageError(
                f"the remembered tree head is of log {self.last.origin!r}, "
                f"not {self.expected_origin!r}"
            )

    @property
    def expected_origin(self) -> str:
        """The origin line a checkpoint must carry."""
        return self.origin or self.log_key.name

    @property
    def verifier_key(self) -> VerifierKey:
        """The witness's public key (give it to the SuperLink and to auditors)."""
        return self.signer.verifier_key()

    def _timestamp(self) -> int:
        now = self.clock()
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise AuditUsageError("the witness clock must return timezone-aware datetimes")
        return int(now.timestamp())

    def _check_extends(self, new: Checkpoint, proof: Sequence[bytes]) -> None:
        last = self.last
        if last is None:
            return
        if new.size < last.size:
            raise LogRolledBack(
                f"the log offers a tree head of size {new.size} but this witness already "
                f"cosigned size {last.size}: the log was rolled back",
                tree_size=new.size,
            )
        try:
            verify_consistency(last.size, new.size, last.root_hash, new.root_hash, proof)
        except ProofError as exc:
            raise LogForked(
                f"the tree head of size {new.size} does not extend the one of size "
                f"{last.size} this witness cosigned: {exc}",
                tree_size=new.size,
            ) from exc

    def cosign(self, note_text: str | bytes, proof: Sequence[bytes] = ()) -> Cosigned:
        """Verify a signed tree head against the remembered one and cosign it.

        Args:
            note_text: the log's signed checkpoint note.
            proof: RFC 9162 consistency proof from :attr:`last` to the new size
                (empty when there is no remembered tree head or the size is equal).

        Returns:
            The cosignature and the witness state to remember.

        Raises:
            MalformedNote: the note does not parse.
            BadSignature: it is not signed by the log key, or names another origin.
            LogRolledBack: it is smaller than the remembered tree head.
            LogForked: the consistency proof does not verify.
            AuditUsageError: the clock returned a naive time.
        """
        verified: VerifiedCheckpoint = verify_checkpoint(note_text, self.log_key)
        new = verified.checkpoint
        if new.origin != self.expected_origin:
            raise BadSignature(
                f"tree head names origin {new.origin!r}, expected {self.expected_origin!r}",
                tree_size=new.size,
            )
        self._check_extends(new, proof)
        signature = cosign_checkpoint(new, self.signer, self._timestamp())
        return Cosigned(checkpoint=new, signature=signature, witness=replace(self, last=new))
