"""The audit library's exceptions, rooted at :class:`AuditError`.

Three families are kept apart (STYLE.md §4):

* bad input - an entry line, signed note, key string or proof that does not
  parse or does not verify (:class:`MalformedEntry`, :class:`MalformedNote`,
  :class:`CanonicalJSONError`, :class:`BadSignature`, :class:`ProofError`);
* evidence of tampering found by the offline verifier, each naming the entry
  index and/or tree size and what was expected versus found
  (:class:`VerificationError` and its subclasses);
* failures of the log itself - an append that could not be written (fail
  closed, :class:`AppendFailed`), an export that could not be written
  (:class:`ExportFailed`) - and caller misuse (:class:`AuditUsageError`).

Messages carry indices, sizes, hashes and key names, never private keys.
"""

from __future__ import annotations

__all__ = [
    "AppendFailed",
    "AuditError",
    "AuditUsageError",
    "BadSignature",
    "CanonicalJSONError",
    "ChainBroken",
    "ExportFailed",
    "InconsistentCheckpoints",
    "LogForked",
    "LogRolledBack",
    "MalformedEntry",
    "MalformedNote",
    "ProofError",
    "ReconcileFailed",
    "SegmentBroken",
    "TreeMismatch",
    "TruncatedLog",
    "UnsignedEntries",
    "VerificationError",
]


class AuditError(Exception):
    """Root of every error raised by the ``audit`` package."""


class AuditUsageError(AuditError):
    """The caller used the API wrongly (closed log, bad argument, no transaction)."""


class CanonicalJSONError(AuditError):
    """A value cannot be written as canonical JSON (a float, a huge int, a bad key)."""


class MalformedNote(AuditError):
    """A signed note, checkpoint body, signature line or key string does not parse."""


class ProofError(AuditError):
    """An inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2)."""


class AppendFailed(AuditError):
    """An audit entry could not be written; the caller's change must not proceed."""


class ExportFailed(AuditError):
    """An export directory could not be written or read (wraps ``OSError``)."""


class VerificationError(AuditError):
    """The log or an export does not verify.

    Attributes:
        entry_index: index (= sequence number) of the first bad entry, if known.
        tree_size: size of the tree head involved, if any.
    """

    def __init__(
        self, message: str, *, entry_index: int | None = None, tree_size: int | None = None
    ) -> None:
        super().__init__(message)
        self.entry_index = entry_index
        self.tree_size = tree_size


class MalformedEntry(VerificationError):
    """An entry line is not a valid canonical audit entry."""


class ChainBroken(VerificationError):
    """The hash chain or the sequence numbers are broken: an entry was edited,
    deleted or reordered."""


class TreeMismatch(VerificationError):
    """The Merkle root of the entries differs from the one a signed tree head claims."""


class BadSignature(VerificationError):
    """A signature from a known key does not verify, or no known key signed."""


class InconsistentCheckpoints(VerificationError):
    """Two signed tree heads cannot both describe the same append-only log."""


class LogRolledBack(InconsistentCheckpoints):
    """A tree head is smaller than one already seen: the log was rolled back."""


class LogForked(InconsistentCheckpoints):
    """A tree head does not extend one already seen (no valid consistency proof)."""


class SegmentBroken(VerificationError):
    """A segment export does not continue its sealing tree head, or a chain of
    segments has a gap or overlap between two of them."""


class ReconcileFailed(VerificationError):
    """A site's log and the SuperLink's log disagree (see the report's findings)."""


class TruncatedLog(VerificationError):
    """Entries a signed tree head commits to are missing from the end of the log."""


class UnsignedEntries(VerificationError):
    """Entries after the last signed tree head are covered by no signature."""
