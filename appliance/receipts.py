"""Run manifests and the signed receipts sites send about them.

A **run manifest** is what a site agrees to when it joins a run: the app bundle's
SHA-256 and the run config exactly as the SuperLink stores them (canonical JSON
text). Its SHA-256 names the manifest in receipts, approvals and audit entries;
the SuperNode and the SuperLink compute it independently from the same fields.

A **receipt** is a site's decision about a run: ``accepted``, ``refused`` (with the
reason) or ``pending`` (waiting for the site administrator), with the manifest's
and the site policy's SHA-256, signed with the node's Ed25519 signing key (a
``certs`` envelope of kind RECEIPT). The SuperLink verifies and keeps every
receipt, so a site's participation cannot be denied later, and neither can its
refusal. Receipts are canonical JSON (RFC 8785, as audit entries), so anyone with
the node's certificate can check one offline.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from appliance.errors import ApplianceError
from audit.canonical import canonical_json, loads_strict
from audit.errors import CanonicalJSONError
from certs.errors import CertError
from certs.signing import EnvelopeKind, EnvelopeSigner, SignedEnvelope, verify_envelope

__all__ = [
    "RECEIPT_SIGNATURE_METHOD",
    "Decision",
    "Receipt",
    "ReceiptInvalid",
    "RunManifest",
    "SignedReceipt",
]

#: The label a receipt signature is bound to (certs envelope of kind RECEIPT).
RECEIPT_SIGNATURE_METHOD = "/greenhouse.fleet.v1.Fleet/SendReceipt"
MANIFEST_VERSION = 1
RECEIPT_VERSION = 1
MAX_REASON_CHARS = 1024
MAX_RECEIPT_BYTES = 8192


class ReceiptInvalid(ApplianceError):
    """A receipt is malformed, for another run or node, or its signature does not verify."""


class Decision(enum.StrEnum):
    """A site's decision about a run."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    PENDING = "pending"  # manual approval: waiting for the site administrator


@dataclass(frozen=True, slots=True, kw_only=True)
class RunManifest:
    """What a site agrees to run: the app and its configuration."""

    run_id: int
    bundle_sha256: str
    run_config_json: str  # canonical JSON text, as the SuperLink stores and sends it

    def canonical(self) -> bytes:
        """The manifest's canonical JSON (the bytes its SHA-256 is taken over)."""
        return canonical_json(
            {
                "manifest": MANIFEST_VERSION,
                "run_id": str(self.run_id),  # 64-bit ids do not fit I-JSON integers
                "bundle_sha256": self.bundle_sha256,
                "run_config": self.run_config_json,
            }
        )

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """One site's decision about one run (unsigned)."""

    run_id: int
    node: str  # the node's enrolled name
    decision: Decision
    manifest_sha256: str
    policy_sha256: str  # "" when the node runs without a site policy
    reason: str = ""
    decided_by: str = ""  # the site administrator for a manual decision, else ""

    def __post_init__(self) -> None:
        if len(self.reason) > MAX_REASON_CHARS:
            object.__setattr__(self, "reason", self.reason[: MAX_REASON_CHARS - 1] + "…")

    def to_bytes(self) -> bytes:
        """The receipt's canonical JSON: the exact bytes that are signed."""
        return canonical_json(
            {
                "receipt": RECEIPT_VERSION,
                "run_id": str(self.run_id),
                "node": self.node,
                "decision": self.decision.value,
                "manifest_sha256": self.manifest_sha256,
                "policy_sha256": self.policy_sha256,
                "reason": self.reason,
                "decided_by": self.decided_by,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """Parse a receipt; only the canonical form of a known version is accepted.

        Raises:
            ReceiptInvalid: not canonical JSON, unknown fields or version, bad values.
        """
        if len(data) > MAX_RECEIPT_BYTES:
            raise ReceiptInvalid(f"receipt is {len(data)} bytes, limit {MAX_RECEIPT_BYTES}")
        try:
            fields = loads_strict(data)
        except CanonicalJSONError as exc:
            raise ReceiptInvalid(f"receipt is not valid JSON: {exc}") from None
        expected = {
            "receipt", "run_id", "node", "decision", "manifest_sha256", "policy_sha256",
            "reason", "decided_by",
        }  # fmt: skip
        if not isinstance(fields, dict) or set(fields) != expected:
            raise ReceiptInvalid(f"receipt must have exactly the fields {sorted(expected)}")
        if fields["receipt"] != RECEIPT_VERSION:
            raise ReceiptInvalid(f"unknown receipt version {fields['receipt']!r}")
        try:
            receipt = cls(
                run_id=int(fields["run_id"]),
                node=_text(fields["node"], "node"),
                decision=Decision(fields["decision"]),
                manifest_sha256=_text(fields["manifest_sha256"], "manifest_sha256"),
                policy_sha256=_text(fields["policy_sha256"], "policy_sha256"),
                reason=_text(fields["reason"], "reason"),
                decided_by=_text(fields["decided_by"], "decided_by"),
            )
        except (TypeError, ValueError) as exc:
            raise ReceiptInvalid(f"receipt has a bad value: {exc}") from None
        if receipt.to_bytes() != bytes(data):
            raise ReceiptInvalid("receipt is not in canonical form")
        return receipt

    def sign(self, signer: EnvelopeSigner) -> SignedReceipt:
        """Sign with the node's key."""
        body = self.to_bytes()
        envelope = signer.sign(
            kind=EnvelopeKind.RECEIPT, method=RECEIPT_SIGNATURE_METHOD, body=body
        )
        return SignedReceipt(body=body, signature=envelope.to_bytes())


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A receipt's bytes with the node's signature envelope over them."""

    body: bytes
    signature: bytes

    def verify(self, signing_key: bytes) -> tuple[Receipt, SignedEnvelope]:
        """Parse and check the signature with the node's raw Ed25519 key.

        Returns:
            The receipt and its envelope (whose timestamp says when it was signed).

        Raises:
            ReceiptInvalid: malformed, or the signature does not verify.
        """
        receipt = Receipt.from_bytes(self.body)
        try:
            envelope = SignedEnvelope.parse(self.signature)
            verify_envelope(
                envelope,
                body=self.body,
                signing_key=signing_key,
                kind=EnvelopeKind.RECEIPT,
                method=RECEIPT_SIGNATURE_METHOD,
            )
        except CertError as exc:
            raise ReceiptInvalid(f"receipt signature refused: {exc}") from None
        return receipt, envelope
