"""Audit entries: value object validation, the canonical line, strict parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from audit.canonical import canonical_json
from audit.entry import (
    GENESIS_PREV,
    MAX_LINE_BYTES,
    SYSTEM,
    Action,
    Actor,
    Entry,
    check_entry_line,
    encode_entry,
    entry_leaf_hash,
    format_time,
    parse_entry,
    parse_time,
)
from audit.errors import CanonicalJSONError, MalformedEntry
from audit.tree import leaf_hash

T = datetime(2025, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
ALICE = Actor(identity="CN=alice,O=Hospital A", role="data-scientist")


def make(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "seq": 7,
        "time": T,
        "actor": ALICE,
        "action": Action.RUN_SUBMITTED,
        "subjects": {"run_id": "r-1"},
        "details": {"rounds": 5, "app": {"sha256": "ab" * 32}, "tags": ["a", True, None]},
        "prev": bytes(range(32)),
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


def test_line_layout_is_exact():
    line = encode_entry(make())
    assert line == (
        b'{"action":"run.submitted","actor":{"id":"CN=alice,O=Hospital A",'
        b'"role":"data-scientist"},"details":{"app":{"sha256":"' + b"ab" * 32 + b'"},'
        b'"rounds":5,"tags":["a",true,null]},"prev":"'
        + bytes(range(32)).hex().encode()
        + b'","seq":7,"subjects":{"run_id":"r-1"},"time":"2025-03-04T05:06:07.000089Z","v":1}'
    )
    assert b"\n" not in line
    assert entry_leaf_hash(make()) == leaf_hash(line)
    assert canonical_json(json.loads(line)) == line


def test_round_trip_and_system_actor():
    entry = make(actor=SYSTEM, action="superlink.started", subjects={}, details={})
    line = encode_entry(entry)
    assert b'"actor":"system"' in line
    assert parse_entry(line) == entry
    assert check_entry_line(line) == (7, bytes(range(32)).hex())
    assert parse_entry(encode_entry(make())) == make()


def test_entry_is_immutable():
    entry = make()
    with pytest.raises(TypeError):
        entry.details["rounds"] = 6  # type: ignore[index]
    with pytest.raises(TypeError):
        entry.subjects["run_id"] = "r-2"  # type: ignore[index]


def test_time_is_normalised_to_utc():
    local = T.astimezone(timezone(timedelta(hours=2)))
    assert make(time=local).time == T
    assert format_time(local) == "2025-03-04T05:06:07.000089Z"
    assert parse_time("2025-03-04T05:06:07.000089Z") == T
    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"


def test_vocabulary_is_fixed():
    assert len(Action) == 27
    assert {Action.REPLY_RECEIVED.value, Action.CHECKPOINT_SEEN.value} == {
        "reply.received",
        "checkpoint.seen",
    }
    assert {Action.RUN_APPROVED, Action.RUN_REFUSED, Action.RECEIPT_RECEIVED} == {
        "run.approved",
        "run.refused",
        "receipt.received",
    }
    assert {a.value.split(".")[0] for a in Action} == {
        "run",
        "round",
        "node",
        "auth",
        "cert",
        "policy",
        "budget",
        "egress",
        "message",
        "superlink",
        "audit",
        "reply",
        "checkpoint",
        "receipt",
    }


BAD_ENTRIES = {
    "negative seq": ({"seq": -1}, MalformedEntry, "not an integer >= 0"),
    "bool seq": ({"seq": True}, MalformedEntry, "not an integer >= 0"),
    "naive time": ({"time": datetime(2025, 1, 1)}, MalformedEntry, "timezone-aware"),
    "unknown action": ({"action": "run.deleted"}, MalformedEntry, "not in the vocabulary"),
    "short prev": ({"prev": b"x"}, MalformedEntry, "prev must be 32 bytes"),
    "float detail": ({"details": {"eps": 0.5}}, CanonicalJSONError, "entry 7 details: float"),
    "big int": ({"details": {"n": 2**60}}, CanonicalJSONError, "outside"),
    "details not object": ({"details": [1]}, MalformedEntry, "JSON object"),
    "subject key": ({"subjects": {"Run": "x"}}, MalformedEntry, "subject key 'Run'"),
    "subject value": ({"subjects": {"run_id": 5}}, MalformedEntry, "subject run_id must be"),
    "subject control": ({"subjects": {"run_id": "a\nb"}}, MalformedEntry, "control"),
    "too many subjects": (
        {"subjects": {f"k{i}": "v" for i in range(17)}},
        MalformedEntry,
        "at most 16",
    ),
    "huge": ({"details": {"x": "y" * MAX_LINE_BYTES}}, MalformedEntry, "limit is 65536"),
}


@pytest.mark.parametrize(
    ("overrides", "error", "message"), BAD_ENTRIES.values(), ids=list(BAD_ENTRIES)
)
def test_invalid_entries_are_refused(overrides, error, message):
    with pytest.raises(error, match=message):
        encode_entry(make(**overrides))


def test_invalid_actors_are_refused():
    with pytest.raises(MalformedEntry, match="role 'Admin'"):
        Actor(identity="CN=x", role="Admin")
    with pytest.raises(MalformedEntry, match="without controls"):
        Actor(identity="CN=x\x00", role="admin")
    with pytest.raises(MalformedEntry, match=r"1..512"):
        Actor(identity="", role="admin")
    with pytest.raises(MalformedEntry, match="actor must be an Actor"):
        make(actor="alice")


GOOD = json.loads(encode_entry(make()))


def mutate(**changes: object) -> bytes:
    """A canonically formatted line with some members changed (no validation)."""
    obj = {**GOOD, **changes}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


BAD_LINES = {
    "not json": (b"{", "not valid JSON"),
    "float": (b'{"v":1.0}', "not an integer"),
    "array": (b"[]", "exactly"),
    "extra key": (mutate(extra=1), "exactly"),
    "version": (mutate(v=2), "version 2"),
    "seq string": (mutate(seq="7"), "sequence number '7'"),
    "action": (mutate(action="run.deleted"), "not in the vocabulary"),
    "prev upper": (mutate(prev="AB" * 32), "64 lowercase hex"),
    "prev short": (mutate(prev="ab"), "64 lowercase hex"),
    "time form": (mutate(time="2025-03-04T05:06:07Z"), "not YYYY-MM-DD"),
    "time offset": (mutate(time="2025-03-04T05:06:07.000089+00:00"), "not YYYY-MM-DD"),
    "time day": (mutate(time="2025-02-30T05:06:07.000089Z"), "does not exist"),
    "time hour": (mutate(time="2025-02-03T24:06:07.000089Z"), "not YYYY-MM-DD"),
    "unicode digits": (mutate(time="2025-03-0\u0664T05:06:07.000089Z"), "not YYYY-MM-DD"),
    "time type": (mutate(time=5), "time is not a string"),
    "actor shape": (mutate(actor={"id": "x"}), 'actor must be "system"'),
    "actor types": (mutate(actor={"id": 1, "role": "x"}), "must be strings"),
    "actor system spelled out": (
        mutate(actor={"id": "system", "role": "system"}),
        'written "system"',
    ),
    "subjects type": (mutate(subjects=[]), "subjects must be an object"),
    "subject control": (mutate(subjects={"run_id": "a\u007fb"}), "control"),
    "details type": (mutate(details="x"), "details is not an object"),
    "details big int": (mutate(details={"n": [2**53]}), "outside"),
    "details deep": (mutate(details={"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}), "deeper"),
    "not canonical": (encode_entry(make()).replace(b'"seq":7', b'"seq": 7'), "canonical"),
    "huge": (b" " * (MAX_LINE_BYTES + 1), "limit is 65536"),
}


@pytest.mark.parametrize(("line", "message"), BAD_LINES.values(), ids=list(BAD_LINES))
def test_invalid_lines_are_refused(line, message):
    with pytest.raises(MalformedEntry, match=message):
        parse_entry(line)
    with pytest.raises(MalformedEntry, match=message):
        check_entry_line(line)


def test_genesis_prev_is_zeros():
    assert bytes(32) == GENESIS_PREV
    assert make(prev=GENESIS_PREV).to_json()["prev"] == "0" * 64


def test_time_must_be_a_datetime():
    with pytest.raises(MalformedEntry, match="must be a datetime"):
        make(time="2025-01-01T00:00:00.000000Z")
