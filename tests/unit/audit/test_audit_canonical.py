"""Canonical JSON (RFC 8785 for the float-free subset)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.canonical import (
    MAX_SAFE_INTEGER,
    canonical_json,
    freeze_json,
    is_canonical,
    loads_canonical_form,
    loads_strict,
    thaw_json,
)
from audit.errors import CanonicalJSONError


def test_rfc8785_member_order_is_utf16():
    # RFC 8785 §3.2.3: sorted by UTF-16 code units, so the emoji (surrogate
    # D83D) sorts before U+FB33, unlike code-point order.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert is_canonical(json.loads(canonical_json(value)), canonical_json(value))


def test_escapes_and_literals():
    assert canonical_json({"b": [True, False, None], "a": '\u00e9\n\x01"\\/'}) == (
        '{"a":"\u00e9\\n\\u0001\\"\\\\/","b":[true,false,null]}'.encode()
    )
    assert canonical_json([-0, 0, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == (
        b"[0,0,9007199254740991,-9007199254740991]"
    )


BAD_VALUES = {
    "float": ({"x": 1.5}, "float 1.5 is not allowed"),
    "integral float": ({"x": 2.0}, "float 2.0 is not allowed"),
    "nan": ([float("nan")], "float nan"),
    "too big": ([MAX_SAFE_INTEGER + 1], "outside"),
    "too small": ([-MAX_SAFE_INTEGER - 1], "outside"),
    "int key": ({1: "x"}, "not a string"),
    "set": ({"x": {1}}, "set is not a JSON value"),
    "bytes": ({"x": b"x"}, "bytes is not a JSON value"),
    "lone surrogate": ({"x": "\ud800"}, "lone surrogate"),
    "too deep": ({"x": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}, "deeper than 16"),
}


@pytest.mark.parametrize(("value", "message"), BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_refused_values(value, message):
    with pytest.raises(CanonicalJSONError, match=message):
        canonical_json(value)


NON_CANONICAL = {
    "whitespace": b'{"a": 1}',
    "order": b'{"b":1,"a":2}',
    "escaped slash": b'{"a":"\\/"}',
    "escaped letter": b'{"a":"\\u0041"}',
    "escaped non-ascii": b'{"a":"\\u00e9"}',
    "uppercase escape": b'{"a":"\\u001F"}',
    "trailing newline": b'{"a":1}\n',
    "duplicate key": b'{"a":1,"a":1}',
    "minus zero": b"[-0]",
    "exponent": b"[1E2]",
    "float": b"[1.0]",
    "nan": b"[NaN]",
    "two values": b"[1][2]",
    "not utf-8": b'["\xff"]',
}


@pytest.mark.parametrize("data", NON_CANONICAL.values(), ids=list(NON_CANONICAL))
def test_non_canonical_forms_are_refused(data):
    with pytest.raises(CanonicalJSONError, match="not"):
        loads_canonical_form(data)


def test_loads_strict_refuses_floats_but_not_form():
    assert loads_strict(b'{ "a" : 1 }') == {"a": 1}
    with pytest.raises(CanonicalJSONError, match=r"number 1.5 is not an integer"):
        loads_strict(b"[1.5]")
    with pytest.raises(CanonicalJSONError, match="Infinity is not JSON"):
        loads_strict(b"[Infinity]")
    with pytest.raises(CanonicalJSONError, match="not valid JSON"):
        loads_strict(b"[")


def test_freeze_and_thaw():
    frozen = freeze_json({"b": [1, {"c": None}], "a": "x"})
    assert list(frozen) == ["a", "b"]  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        frozen["a"] = "y"  # type: ignore[index]
    assert thaw_json(frozen) == {"a": "x", "b": [1, {"c": None}]}
    assert canonical_json(frozen) == b'{"a":"x","b":[1,{"c":null}]}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_property_round_trip_is_canonical(value):
    data = canonical_json(value)
    parsed = loads_canonical_form(data)
    assert parsed == json.loads(data)
    assert canonical_json(parsed) == data
    assert is_canonical(parsed, data)
