"""DANGER: expands a 32-byte key into a mask stream (AES-256-CTR keystream). No checks.

The keystream of AES-256 in counter mode from a zero counter block, read as
little-endian unsigned words, is computationally indistinguishable from uniform
words for a uniformly random key (the full 256-bit key is used; nothing is folded
into a small seed). Each key MUST be used for one stream only: the safe layer
derives a fresh key per round, pair and purpose with HKDF (:mod:`secagg.crypto`).

Expansion runs in OpenSSL (AES-NI where the CPU has it): about 2 ms per million
32-bit words on one core, vectorised end to end (no Python loop over elements).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["KEY_BYTES", "add_mask", "expand_words"]

KEY_BYTES = 32
_ZERO_COUNTER = bytes(16)


def expand_words(key: bytes, count: int, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """``count`` pseudo-random unsigned words of ``dtype`` (uint32 or uint64) from ``key``.

    Returns a read-only array backed by the keystream. Raises ValueError for a key
    that is not 32 bytes, a negative count or a dtype that is not uint32/uint64.
    """
    word = np.dtype(dtype)
    if word not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError(f"mask words must be uint32 or uint64, not {word.name}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"a mask key is {KEY_BYTES} bytes, got {len(key)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
    stream = encryptor.update(bytes(count * word.itemsize))
    return np.frombuffer(stream, dtype=word.newbyteorder("<")).astype(word, copy=False)


def add_mask(accumulator: npt.NDArray[Any], key: bytes, *, subtract: bool = False) -> None:
    """Add (or subtract) the mask expanded from ``key`` into ``accumulator``, modulo 2^bits.

    ``accumulator`` is a 1-D uint32 or uint64 array; unsigned numpy arithmetic wraps,
    which is exactly arithmetic modulo 2^32 or 2^64.
    """
    mask = expand_words(key, accumulator.size, accumulator.dtype)
    if subtract:
        np.subtract(accumulator, mask, out=accumulator)
    else:
        np.add(accumulator, mask, out=accumulator)
