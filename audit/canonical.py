"""Canonical JSON for audit entries: RFC 8785 (JCS) for a float-free subset.

Values are ``null``, booleans, integers in the I-JSON safe range
(|n| <= 2**53 - 1, RFC 7493 §2.2), strings, arrays and objects with string
keys. Floats, NaN and infinities are refused with :class:`CanonicalJSONError`:
their JCS form depends on ECMAScript number printing, and audit details never
need them (state amounts as integers in a stated unit, or as strings).

For this subset the output is exactly RFC 8785's: no insignificant whitespace,
object members sorted by the UTF-16 code units of their names (§3.2.3),
strings escaped as ECMAScript ``JSON.stringify`` does (only ``"``, ``\\`` and
controls below U+0020; ``\\b \\t \\n \\f \\r`` short forms, the rest ``\\u00xx``),
everything else written as raw UTF-8. Lone surrogates cannot be UTF-8 and are
refused. Pure functions; the module guarantees nothing about meaning, only form.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

from audit.errors import CanonicalJSONError

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "JsonValue",
    "canonical_json",
    "encode_ordered",
    "freeze_json",
    "is_canonical",
    "loads_canonical_form",
    "loads_strict",
    "thaw_json",
]

JsonValue: TypeAlias = bool | int | str | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 16

# The C encoder, configured once; key order is handled by _plain (UTF-16 order).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Fast path for already-parsed documents: code-point order equals UTF-16 order
# unless a key has a character above U+FFFF; callers fall back to the exact path.
_SORTED_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    allow_nan=False,
    sort_keys=True,
    check_circular=False,
)


def _refuse_default(value: object) -> NoReturn:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _make_sorted_encode() -> Callable[[Any], str]:
    """Build the sorted encoder once (CPython's C encoder when present; it is
    otherwise rebuilt on every ``JSONEncoder.encode`` call, a cost the verifier
    pays a million times)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return _SORTED_ENCODER.encode
    encode = make(None, _refuse_default, basestring, None, ":", ",", True, False, False)
    return lambda value: "".join(encode(value, 0))


_sorted_encode = _make_sorted_encode()


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _plain(value: object, depth: int) -> Any:
    """Validate ``value`` and return a plain, JCS-ordered copy of it."""
    if value is None or value is True or value is False or type(value) is str:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJSONError(f"integer {value} is outside ±(2**53 - 1)")
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        raise CanonicalJSONError(f"float {value!r} is not allowed; use an integer or string")
    if depth >= MAX_DEPTH:
        raise CanonicalJSONError(f"JSON nesting deeper than {MAX_DEPTH}")
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"object key {key!r} is not a string")
            items.append((str(key), _plain(item, depth + 1)))
        if all(k.isascii() for k, _ in items):
            items.sort(key=itemgetter(0))
        else:
            items.sort(key=lambda kv: _utf16_key(kv[0]))
        return dict(items)
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    raise CanonicalJSONError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: object) -> bytes:
    """Return the canonical UTF-8 JSON text of ``value``.

    Args:
        value: ``None``, ``bool``, ``int``, ``str``, lists/tuples and mappings
            with ``str`` keys, nested at most :data:`MAX_DEPTH` deep.

    Returns:
        The RFC 8785 serialization as bytes.

    Raises:
        CanonicalJSONError: a float, an out-of-range integer, a non-string key,
            a lone surrogate or an unsupported type.
    """
    text = _ENCODER.encode(_plain(value, 0))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJSONError("string holds a lone surrogate; not valid UTF-8") from exc


def encode_ordered(value: Any) -> bytes:
    """Encode a value already validated and JCS-ordered (from :func:`freeze_json`,
    :func:`thaw_json` or hand-built with members in order), skipping re-validation.

    Raises:
        CanonicalJSONError: a string holds a lone surrogate.
    """
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJSONError("string holds a lone surrogate; not valid UTF-8") from exc


def freeze_json(value: object) -> JsonValue:
    """Return a deeply immutable copy (tuples, read-only mappings) of a JSON value.

    Raises:
        CanonicalJSONError: as :func:`canonical_json`.
    """
    return _freeze(_plain(value, 0))


def _freeze(value: Any) -> JsonValue:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value  # type: ignore[no-any-return]


def thaw_json(value: JsonValue) -> Any:
    """Return a plain mutable copy (``dict``/``list``) of a frozen JSON value."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw_json(v) for v in value]
    return value


def _refuse_float(text: str) -> NoReturn:
    raise CanonicalJSONError(f"number {text} is not an integer")


def _refuse_constant(text: str) -> NoReturn:
    raise CanonicalJSONError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_constant)


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON, refusing floats, NaN and infinities.

    Raises:
        CanonicalJSONError: the text is not UTF-8 JSON of the allowed subset.
    """
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except CanonicalJSONError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CanonicalJSONError(f"not valid JSON: {exc}") from exc


def loads_canonical_form(data: bytes) -> Any:
    """Parse ``data`` and check it is written in canonical form.

    The verifier's hot path. Checks everything about *form* (floats refused,
    no whitespace, member order, escapes, number spelling); the range of
    integers and the nesting depth are left to the caller, who knows where
    integers may occur (or use :func:`canonical_json` on the result). ASCII
    text takes a fast path (code-point order equals UTF-16 order there).

    Raises:
        CanonicalJSONError: not UTF-8 JSON of the subset, or not canonical.
    """
    try:
        text = data.decode("utf-8")
        value, end = _DECODER.raw_decode(text)
    except CanonicalJSONError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CanonicalJSONError(f"not valid JSON: {exc}") from exc
    if end != len(text) or not _same(value, text, data):
        raise CanonicalJSONError("text is not in canonical JSON form")
    return value


def _same(value: Any, text: str, data: bytes) -> bool:
    try:
        if data.isascii():
            return bool(_sorted_encode(value) == text)
        return canonical_json(value) == data
    except (CanonicalJSONError, ValueError):
        return False


def is_canonical(value: Any, data: bytes) -> bool:
    """Tell whether ``data`` is the canonical serialization of the parsed ``value``.

    Checks form only, like :func:`loads_canonical_form`.
    """
    try:
        return _same(value, data.decode("utf-8"), data)
    except UnicodeDecodeError:
        return False
