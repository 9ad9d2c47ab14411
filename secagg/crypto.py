"""Key agreement, key derivation, share encryption and the signed payloads of SecAgg+.

Guarantees: every symmetric key is derived with HKDF-SHA256 (RFC 5869) from an
X25519 shared secret (RFC 7748) or a random seed, with a domain-separated ``info``
naming its purpose, the round and the node(s), so no key serves two purposes or two
rounds. Shares are sealed with ChaCha20-Poly1305 (RFC 8439) under a key for one
direction of one pair, bound to round, sender and receiver as associated data.
Signed payloads carry their own domain tags, distinct from any other use of a
node's signing key. All randomness comes from the injected ``rng``.

Left to others: expanding keys into masks (:mod:`secagg.primitives.prg`) and
splitting secrets (:mod:`secagg.primitives.shamir`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from secagg.primitives import shamir

__all__ = [
    "ADVERTISE_DOMAIN",
    "CONSISTENCY_DOMAIN",
    "KEY_BYTES",
    "NONCE_BYTES",
    "SEALED_SHARE_BYTES",
    "SIGNATURE_BYTES",
    "SIGNED_DOMAINS",
    "Rng",
    "advertise_payload",
    "agree",
    "consistency_payload",
    "open_share",
    "pair_mask_key",
    "private_key",
    "public_key",
    "rounding_key",
    "seal_share",
    "self_mask_commitment",
    "self_mask_key",
    "signature_is_valid",
]

#: A source of cryptographically secure random bytes, e.g. ``os.urandom``.
Rng = Callable[[int], bytes]

KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_TAG_BYTES = 16
#: Plaintext of a share: the self-mask seed share and the mask-key share.
SHARE_PLAINTEXT_BYTES = 2 * shamir.ELEMENT_BYTES
SEALED_SHARE_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + _TAG_BYTES
_ID = struct.Struct(">Q")


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def private_key(secret: int) -> X25519PrivateKey:
    """The X25519 private key whose scalar is encoded by field element ``secret``."""
    return X25519PrivateKey.from_private_bytes(shamir.element_to_bytes(secret))


def public_key(secret: int) -> bytes:
    """The raw X25519 public key for the private scalar encoded by field element ``secret``."""
    return private_key(secret).public_key().public_bytes_raw()


def agree(private: X25519PrivateKey, peer_public_key: bytes) -> bytes:
    """X25519 shared secret of ``private`` with ``peer_public_key``.

    Raises:
        ValueError: the peer key is not 32 bytes or is a low-order point.
    """
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))


def pair_mask_key(shared: bytes, round_id: bytes, a: int, b: int) -> bytes:
    """The AES key of the pairwise mask between nodes ``a`` and ``b`` (symmetric in a, b)."""
    low, high = sorted((a, b))
    info = b"greenhouse/secagg/pair-mask/v1\x00" + _ID.pack(low) + _ID.pack(high)
    return _hkdf(shared, round_id, info)


def self_mask_key(seed: int, round_id: bytes, node_id: int) -> bytes:
    """The AES key of ``node_id``'s self mask, from its shared seed."""
    info = b"greenhouse/secagg/self-mask/v1\x00" + _ID.pack(node_id)
    return _hkdf(shamir.element_to_bytes(seed), round_id, info)


def self_mask_commitment(seed: int, round_id: bytes, node_id: int) -> bytes:
    """SHA-256 commitment to the self-mask seed, so a bad reconstruction is detected."""
    data = b"greenhouse/secagg/self-mask-commitment/v1\x00" + round_id + _ID.pack(node_id)
    return hashlib.sha256(data + shamir.element_to_bytes(seed)).digest()


def rounding_key(rng: Rng) -> bytes:
    """A fresh key for the stochastic-rounding stream (never used for masks)."""
    return _hkdf(rng(KEY_BYTES), b"", b"greenhouse/secagg/rounding/v1")


def _share_key(shared: bytes, round_id: bytes, sender: int, receiver: int) -> bytes:
    info = b"greenhouse/secagg/share-seal/v1\x00" + _ID.pack(sender) + _ID.pack(receiver)
    return _hkdf(shared, round_id, info)


def _share_aad(round_id: bytes, sender: int, receiver: int) -> bytes:
    return b"greenhouse/secagg/share/v1\x00" + round_id + _ID.pack(sender) + _ID.pack(receiver)


def seal_share(
    shared: bytes,
    *,
    round_id: bytes,
    sender: int,
    receiver: int,
    self_mask_share: int,
    key_share: int,
    rng: Rng,
) -> bytes:
    """Encrypt ``sender``'s two shares for ``receiver`` (nonce + ciphertext + tag)."""
    key = _share_key(shared, round_id, sender, receiver)
    nonce = rng(NONCE_BYTES)
    plaintext = shamir.element_to_bytes(self_mask_share) + shamir.element_to_bytes(key_share)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, plaintext, _share_aad(round_id, sender, receiver))
    return nonce + sealed


def open_share(
    shared: bytes, sealed: bytes, *, round_id: bytes, sender: int, receiver: int
) -> tuple[int, int]:
    """Decrypt a sealed share; return (self-mask seed share, mask-key share).

    Raises:
        ValueError: the share does not decrypt and verify, or holds a non-element
            (the reason stays opaque: no detail about the key or the bytes).
    """
    if len(sealed) != SEALED_SHARE_BYTES:
        raise ValueError(f"sealed share is {len(sealed)} bytes, expected {SEALED_SHARE_BYTES}")
    key = _share_key(shared, round_id, sender, receiver)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _share_aad(round_id, sender, receiver)
        )
    except InvalidTag:
        raise ValueError("share does not decrypt (wrong key, sender, receiver or round)") from None
    half = shamir.ELEMENT_BYTES
    return (
        shamir.element_from_bytes(plaintext[:half]),
        shamir.element_from_bytes(plaintext[half:]),
    )


#: Domain tags of everything a node signs for SecAgg+ (and nothing else carries them).
ADVERTISE_DOMAIN = b"greenhouse/secagg/advertise/v1\x00"
CONSISTENCY_DOMAIN = b"greenhouse/secagg/consistency/v1\x00"
SIGNED_DOMAINS = (ADVERTISE_DOMAIN, CONSISTENCY_DOMAIN)


def advertise_payload(
    *,
    config_digest: bytes,
    node_id: int,
    cipher_public_key: bytes,
    mask_public_key: bytes,
    commitment: bytes,
) -> bytes:
    """The bytes a node signs when it advertises its keys for a round."""
    return (
        ADVERTISE_DOMAIN
        + config_digest
        + _ID.pack(node_id)
        + cipher_public_key
        + mask_public_key
        + commitment
    )


def consistency_payload(round_id: bytes, roster_digest: bytes, survivors: Iterable[int]) -> bytes:
    """The bytes a node signs to confirm the participants and survivors it was shown."""
    ids = sorted(survivors)
    return (
        CONSISTENCY_DOMAIN
        + round_id
        + roster_digest
        + _ID.pack(len(ids))
        + b"".join(_ID.pack(node) for node in ids)
    )


def signature_is_valid(verify_key: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``payload`` under ``verify_key``.

    libsodium (strict RFC 8032 checks; several times faster than OpenSSL here, which
    matters as every client checks every participant's signature).
    """
    try:
        VerifyKey(verify_key).verify(payload, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
