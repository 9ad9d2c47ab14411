"""Verifying the participants' advertised keys: the one place peers' keys are admitted.

:func:`verify_roster` takes the roster the (untrusted) server relays and returns a
:class:`VerifiedRoster` or raises. An entry is admitted only if the key directory
(the federation CA, injected) vouches for the credential relayed with it, its
signature over the round config and its keys verifies under that CA-bound key, and
no key (signing, encryption or masking) appears twice, so one party cannot pose as
two participants and the server cannot insert or alter a participant. The
receiving node's own entry must be exactly what it advertised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from secagg import crypto
from secagg.errors import ProtocolViolation
from secagg.identity import KeyDirectory
from secagg.messages import AdvertisedKeys, Stage, roster_digest

__all__ = ["VerifiedRoster", "verify_roster"]

_STAGE = Stage.SHARE_KEYS


@dataclass(frozen=True, slots=True)
class VerifiedRoster:
    """Participants whose keys passed :func:`verify_roster`. Only that function makes one."""

    entries: Mapping[int, AdvertisedKeys] = field(repr=False)
    verify_keys: Mapping[int, bytes] = field(repr=False)
    digest: bytes = field(repr=False)

    @property
    def ids(self) -> list[int]:
        """The participants' node ids, sorted."""
        return sorted(self.entries)


def _verify_key(entry: AdvertisedKeys, directory: KeyDirectory) -> bytes:
    try:
        verify_key = directory(entry.node_id, entry.credential)
    except Exception as exc:  # the directory says no in its own words
        raise ProtocolViolation(
            f"credential of node {entry.node_id} refused: {type(exc).__name__}: {exc}",
            node_id=entry.node_id,
            stage=_STAGE,
        ) from None
    if not isinstance(verify_key, bytes) or len(verify_key) != 32:
        raise ProtocolViolation(
            f"key directory returned no Ed25519 key for node {entry.node_id}",
            node_id=entry.node_id,
            stage=_STAGE,
        )
    return verify_key


def verify_roster(
    roster: tuple[AdvertisedKeys, ...],
    *,
    own: AdvertisedKeys,
    config_digest: bytes,
    key_directory: KeyDirectory,
) -> VerifiedRoster:
    """Admit ``roster`` (sorted, distinct ids, already well-formed) or raise.

    Args:
        roster: the entries the server relayed.
        own: what this node advertised; its entry must be identical.
        config_digest: the round config every entry's signature must cover.
        key_directory: the CA-bound verification key of each participant.

    Raises:
        ProtocolViolation: the own entry was altered (``node_id`` 0, the server), a
            credential is refused, a signature does not verify, or a key repeats
            (``node_id`` of the entry at fault).
    """
    seen: dict[bytes, int] = {}
    verify_keys: dict[int, bytes] = {}
    for entry in roster:
        if entry.node_id == own.node_id and entry != own:
            raise ProtocolViolation(
                "the roster alters this node's advertised keys", node_id=0, stage=_STAGE
            )
        verify_key = _verify_key(entry, key_directory)
        if not crypto.signature_is_valid(
            verify_key, entry.signed_payload(config_digest), entry.signature
        ):
            raise ProtocolViolation(
                f"keys advertised for node {entry.node_id} are not signed by its CA-bound "
                "signing key (forged or altered)",
                node_id=entry.node_id,
                stage=_STAGE,
            )
        for key in (verify_key, entry.cipher_public_key, entry.mask_public_key):
            if key in seen:
                raise ProtocolViolation(
                    f"nodes {seen[key]} and {entry.node_id} share a key: one party may not "
                    "appear twice",
                    node_id=entry.node_id,
                    stage=_STAGE,
                )
            seen[key] = entry.node_id
        verify_keys[entry.node_id] = verify_key
    if own.node_id not in verify_keys:
        raise ProtocolViolation("this node is missing from the roster", node_id=0, stage=_STAGE)
    return VerifiedRoster(
        entries={entry.node_id: entry for entry in roster},
        verify_keys=verify_keys,
        digest=roster_digest(roster),
    )
