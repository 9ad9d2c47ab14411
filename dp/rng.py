"""Where DP noise gets its randomness.

Flower draws DP noise from ``np.random.normal``, numpy's global Mersenne Twister:
seedable by any library in the process, shared with everything else, and predictable
from a few hundred outputs. Greenhouse never uses a global generator for noise:

* :func:`secure_rng` returns a fresh ``numpy.random.Generator`` on ``PCG64DXSM``
  seeded with 256 bits from the operating system (:mod:`secrets`, i.e.
  ``getrandom``/``/dev/urandom``). The safe layer (mods, strategy wrappers) calls it
  once per noise draw, so every update's noise comes from an independent OS seed and
  no generator state outlives one call or is shared with other code.
* Pure mechanisms take the generator as an argument (an injected RNG): tests pass a
  seeded ``numpy.random.default_rng(seed)`` and get reproducible noise. The shell
  layer accepts one only as ``unsafe_rng`` and logs a warning when it is used.

PCG64DXSM is not a cryptographic generator; what makes this sound is that its seed
is secret and fresh per call and that nobody observes the raw noise, only noise plus
a clipped update. Floating-point Gaussian sampling has known side channels in the
low-order bits (Mironov 2012; Jin et al. 2022): the integer-domain mechanism in
:mod:`dp.distributed` (Skellam) does not have them. See ``docs/dp.md``.
"""

from __future__ import annotations

import secrets

import numpy as np

from appliance.logs import get_logger

__all__ = ["SEED_BITS", "noise_rng", "secure_rng", "warn_if_unsafe"]

#: Bits of OS entropy in each fresh generator's seed.
SEED_BITS = 256
_log = get_logger("dp.rng")


def secure_rng() -> np.random.Generator:
    """A new generator seeded with :data:`SEED_BITS` bits from the operating system."""
    seed = np.random.SeedSequence(secrets.randbits(SEED_BITS))
    return np.random.Generator(np.random.PCG64DXSM(seed))


def noise_rng(unsafe_rng: np.random.Generator | None) -> np.random.Generator:
    """The generator for one batch of noise: ``unsafe_rng`` if given, else :func:`secure_rng`."""
    return secure_rng() if unsafe_rng is None else unsafe_rng


def warn_if_unsafe(unsafe_rng: np.random.Generator | None, *, owner: str) -> None:
    """Log a warning when a shell component was given an injected (reproducible) generator."""
    if unsafe_rng is not None:
        _log.warning(
            "DP noise from an injected generator: reproducible, for tests only", owner=owner
        )
