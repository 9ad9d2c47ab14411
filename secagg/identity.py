"""How a node proves who it is in SecAgg+, and how it learns its peers' keys.

SecAgg+ public keys are signed with the node's Ed25519 signing key, the one its
federation certificate binds (DESIGN.md, Identity). This library does not read
certificates (it may not import ``certs``); the host injects:

- a :class:`Signer` over the node's signing key (:class:`Ed25519Signer` wraps a
  ``cryptography`` key), and the node's ``credential`` (its certificate, DER), which
  the server relays to the other participants;
- a :class:`KeyDirectory`: given a peer's node id and the credential relayed for it,
  returns the raw Ed25519 key the *federation CA* binds to that peer, or raises.
  The server relays credentials but cannot forge them, so it cannot insert clients.

:func:`restrict_to_secagg` wraps a signer so it signs SecAgg+ payloads only: a host
that keeps the node key outside the ClientApp process (it should: app code is not
trusted with the key that authenticates the site) serves signatures through it.

:class:`UnsafeLocalKeyring` stands in for the CA in the local runner and tests:
keys are generated in this process and the credential is just the public key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.context import Context
from appliance.logs import get_logger
from secagg.crypto import SIGNED_DOMAINS, Rng

__all__ = [
    "MAX_CREDENTIAL_BYTES",
    "CredentialsSource",
    "Ed25519Signer",
    "KeyDirectory",
    "NodeCredentials",
    "Signer",
    "UnsafeLocalKeyring",
    "restrict_to_secagg",
]

MAX_CREDENTIAL_BYTES = 16 * 1024
_log = get_logger("secagg.identity")


@runtime_checkable
class Signer(Protocol):
    """Signs bytes with the node's Ed25519 signing key (a 64-byte RFC 8032 signature)."""

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        ...


class KeyDirectory(Protocol):
    """Maps a peer to the Ed25519 verification key the federation CA binds to it.

    MUST return the raw 32-byte key bound in ``credential`` only after checking
    that ``credential`` is a valid, unrevoked node credential of this federation
    (in a deployment: certificate chain to the federation CA, role ``node``, CRL),
    and MUST raise (any exception) otherwise. MUST NOT trust anything the server
    says beyond the credential bytes themselves.
    """

    def __call__(self, node_id: int, credential: bytes) -> bytes:
        """The verification key for ``node_id`` from its relayed ``credential``."""
        ...


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """What a host gives the SecAgg+ client of one node."""

    signer: Signer = field(repr=False)
    credential: bytes = field(repr=False)
    key_directory: KeyDirectory = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.credential, bytes) or len(self.credential) > MAX_CREDENTIAL_BYTES:
            raise ValueError(f"a credential is bytes of at most {MAX_CREDENTIAL_BYTES}")


class _SecAggOnlySigner:
    __slots__ = ("_signer",)

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def sign(self, data: bytes) -> bytes:
        if not data.startswith(SIGNED_DOMAINS):
            raise PermissionError("this signer signs SecAgg+ payloads only")
        return self._signer.sign(data)

    def __repr__(self) -> str:
        return "restrict_to_secagg(<signer>)"


def restrict_to_secagg(signer: Signer) -> Signer:
    """A signer that signs only SecAgg+ payloads (advertised keys, confirmations).

    Use it where the node's signing key is held (the SuperNode) when signing on
    behalf of the ClientApp process, so app code cannot get arbitrary data
    (e.g. a request to the SuperLink) signed with the node's key.
    """
    return _SecAggOnlySigner(signer)


#: How a mod finds the credentials of the node a message is for.
CredentialsSource = Callable[[Context], NodeCredentials]


class Ed25519Signer:
    """A :class:`Signer` over an Ed25519 private key (e.g. ``certs.load_signing_key``'s)."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        """Sign with ``key``; the key stays in this object and is never shown."""
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(key).__name__}")
        self._key = key

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        return self._key.sign(data)

    def public_key(self) -> bytes:
        """The raw 32-byte verification key."""
        return self._key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        """Never show the key."""
        return "Ed25519Signer(<key>)"


class UnsafeLocalKeyring:
    """UNSAFE outside tests and local runs: plays the CA for nodes in one process.

    Each node id gets a fresh Ed25519 key on first use; its "credential" is its
    public key, and :meth:`key_directory` accepts a credential only if it is the
    key this keyring made for that node. Anyone in the process can sign for any
    node, which is exactly what a local simulation is.

    Args:
        rng: randomness for the keys (``os.urandom`` by default; seed it in tests).
    """

    def __init__(self, rng: Rng = os.urandom) -> None:
        self._rng = rng
        self._keys: dict[int, Ed25519PrivateKey] = {}
        _log.warning("unsafe SecAgg+ keyring: node keys generated in-process, for local runs only")

    def _key(self, node_id: int) -> Ed25519PrivateKey:
        if node_id not in self._keys:
            self._keys[node_id] = Ed25519PrivateKey.from_private_bytes(self._rng(32))
        return self._keys[node_id]

    def credentials(self, node_id: int) -> NodeCredentials:
        """The credentials of ``node_id`` (created on first use)."""
        signer = Ed25519Signer(self._key(node_id))
        return NodeCredentials(
            signer=signer, credential=signer.public_key(), key_directory=self.key_directory
        )

    def source(self) -> CredentialsSource:
        """A :data:`CredentialsSource` for :func:`secagg.make_secagg_mod`."""
        return lambda context: self.credentials(context.node_id)

    def key_directory(self, node_id: int, credential: bytes) -> bytes:
        """The key made for ``node_id``, if ``credential`` is it; else raise ``LookupError``."""
        key = self._keys.get(node_id)
        if key is None:
            raise LookupError(f"node {node_id} has no key in this keyring")
        expected = key.public_key().public_bytes_raw()
        if credential != expected:
            raise LookupError(f"the credential relayed for node {node_id} is not its key")
        return expected
