"""DANGER: Shamir secret sharing over GF(2^255 - 19) (Shamir 1979). No policy checks.

A secret is one field element; :func:`split` hides it as the constant term of a
random polynomial of degree ``threshold - 1`` and returns its values at the given
non-zero x-coordinates; any ``threshold`` of them give the secret back through
Lagrange interpolation at zero (:func:`reconstruct`), fewer reveal nothing.

The prime is the Curve25519 field prime, so every 32-byte value below it is an
element and each share is 32 bytes. Nothing here checks that a threshold is safe,
that shares came from the right holders, or that a reconstruction is right: the
safe layer (:mod:`secagg.client`, :mod:`secagg.server`) does that, and checks every
reconstructed secret against a public commitment.

Lagrange coefficients are computed with one modular inversion for the whole set
(Montgomery's batch-inversion trick), so reconstructing from ``t`` shares costs
O(t) multiplications plus one inversion, and coefficients for a set of holders can
be reused for several secrets (:func:`lagrange_at_zero`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = [
    "ELEMENT_BYTES",
    "PRIME",
    "element_from_bytes",
    "element_to_bytes",
    "evaluate",
    "lagrange_at_zero",
    "random_element",
    "reconstruct",
    "split",
]

#: The field prime, 2^255 - 19.
PRIME = 2**255 - 19
ELEMENT_BYTES = 32
_TOP_BIT_MASK = (1 << 255) - 1


def random_element(rng: Callable[[int], bytes]) -> int:
    """A uniform field element from ``rng`` (32 random bytes per try; rejection sampling)."""
    while True:
        value = int.from_bytes(rng(ELEMENT_BYTES), "little") & _TOP_BIT_MASK
        if value < PRIME:  # fails with probability 19 / 2^255
            return value


def element_to_bytes(value: int) -> bytes:
    """The 32-byte little-endian encoding of a field element."""
    if not 0 <= value < PRIME:
        raise ValueError("value is not a field element")
    return value.to_bytes(ELEMENT_BYTES, "little")


def element_from_bytes(data: bytes) -> int:
    """Parse a 32-byte little-endian field element; ValueError if out of range."""
    if len(data) != ELEMENT_BYTES:
        raise ValueError(f"a field element is {ELEMENT_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= PRIME:
        raise ValueError("value is not below the field prime")
    return value


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with ``coefficients`` (constant term first) at ``x`` (Horner)."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def split(secret: int, threshold: int, xs: Sequence[int], rng: Callable[[int], bytes]) -> list[int]:
    """Shares of ``secret``: a random degree ``threshold - 1`` polynomial evaluated at ``xs``.

    Raises ValueError if the x-coordinates are not distinct non-zero field elements,
    or if ``threshold`` is not in ``1..len(xs)``.
    """
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} is not in 1..{len(xs)}")
    if not 0 <= secret < PRIME:
        raise ValueError("secret is not a field element")
    coefficients = [secret] + [random_element(rng) for _ in range(threshold - 1)]
    return [evaluate(coefficients, x) for x in xs]


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_j`` with ``f(0) = sum(l_j * f(x_j))`` for every f of degree < len(xs).

    ``l_j = prod_{m != j} x_m / (x_m - x_j)``; all denominators are inverted with a
    single modular exponentiation (batch inversion).
    """
    _check_xs(xs)
    numerator = 1
    for x in xs:
        numerator = numerator * x % PRIME
    denominators = []
    for j, xj in enumerate(xs):
        d = xj
        for m, xm in enumerate(xs):
            if m != j:
                d = d * (xm - xj) % PRIME
        denominators.append(d)
    inverses = _batch_inverse(denominators)
    # l_j = (prod_m x_m / x_j) / prod_{m != j} (x_m - x_j) = numerator * inv(x_j * prod(...))
    return [numerator * inv % PRIME for inv in inverses]


def reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """The constant term of the unique polynomial of degree < len(points) through ``points``."""
    if not points:
        raise ValueError("no shares to reconstruct from")
    xs = [x for x, _ in points]
    coefficients = lagrange_at_zero(xs)
    return sum(c * y for c, (_, y) in zip(coefficients, points, strict=True)) % PRIME


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("x-coordinates must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise ValueError("x-coordinates must be non-zero field elements")


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Modular inverses of non-zero ``values`` with one exponentiation (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, value in enumerate(values):
        prefix[i + 1] = prefix[i] * value % PRIME
    inverse = pow(prefix[-1], PRIME - 2, PRIME)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = prefix[i] * inverse % PRIME
        inverse = inverse * values[i] % PRIME
    return result
