"""Contract: enrolled nodes (run against every backend)."""

import dataclasses

import pytest

from appliance.state import (
    Enrolment,
    InvalidArgument,
    Node,
    NodeAlreadyEnrolled,
    NodeNotFound,
    StateError,
)


def test_enrol_returns_a_frozen_offline_node(state, clock, fp):
    node = state.enrol_node("hospital-a", fp("cert"), fp("key"), "admin")
    assert isinstance(node, Node)
    assert 0 < node.node_id < 2**63
    assert node.name == "hospital-a"
    assert node.cert_fingerprint == fp("cert")
    assert node.signing_key_fingerprint == fp("key")
    assert node.enrolled_at == clock.now
    assert node.enrolled_by == "admin"
    assert node.last_seen_at is None
    assert node.online is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.online = True  # type: ignore[misc]
    assert state.get_node(node.node_id) == node


def test_node_ids_are_random_and_distinct(make_node):
    ids = {make_node(f"site-{i}").node_id for i in range(20)}
    assert len(ids) == 20
    assert all(0 < i < 2**63 for i in ids)


def test_duplicate_name_is_refused(state, make_node, fp):
    make_node("hospital-a")
    with pytest.raises(NodeAlreadyEnrolled, match="named 'hospital-a' is already enrolled"):
        state.enrol_node("hospital-a", fp("other cert"), fp("other key"), "admin")


def test_duplicate_certificate_is_refused(state, make_node, fp):
    make_node("hospital-a")
    with pytest.raises(NodeAlreadyEnrolled, match="already enrolled as node 'hospital-a'"):
        state.enrol_node("hospital-b", fp("cert:hospital-a"), fp("key b"), "admin")


BAD_ENROLMENTS = {
    "empty name": ("", "a" * 64, "b" * 64, "admin", "node name must be a string"),
    "control char": ("bad\nname", "a" * 64, "b" * 64, "admin", "control characters"),
    "edge space": (" padded", "a" * 64, "b" * 64, "admin", "edge spaces"),
    "surrogate": ("x\udc80", "a" * 64, "b" * 64, "admin", "unencodable character"),
    "short fp": ("n", "abc", "b" * 64, "admin", "cert_fingerprint must be 64 lowercase hex"),
    "upper fp": ("n", "A" * 64, "b" * 64, "admin", "cert_fingerprint must be 64 lowercase hex"),
    "bad key fp": ("n", "a" * 64, "../x", "admin", "signing_key_fingerprint must be 64"),
    "no admin": ("n", "a" * 64, "b" * 64, "", "enrolled_by must be a string"),
}


@pytest.mark.parametrize("case", BAD_ENROLMENTS.values(), ids=list(BAD_ENROLMENTS))
def test_malformed_enrolment_is_refused(state, case):
    name, cert, key, admin, message = case
    with pytest.raises(InvalidArgument, match=message):
        state.enrol_node(name, cert, key, admin)
    assert state.list_nodes() == []


def test_remove_node(state, make_node):
    node = make_node("hospital-a")
    assert state.remove_node("hospital-a") == node
    assert state.list_nodes() == []
    with pytest.raises(NodeNotFound, match=f"node {node.node_id} not found"):
        state.get_node(node.node_id)
    with pytest.raises(NodeNotFound, match="node 'hospital-a' not found"):
        state.remove_node("hospital-a")


def test_removed_name_can_be_enrolled_again(state, make_node):
    old = make_node("hospital-a")
    state.remove_node("hospital-a")
    new = make_node("hospital-a")
    assert new.node_id != old.node_id


def test_lookups(state, make_node, fp):
    a = make_node("hospital-a")
    b = make_node("bank-b")
    assert state.enrolment(fp("cert:bank-b")).node_id == b.node_id
    assert state.enrolment(fp("unknown")) is None
    assert state.find_node_by_name("hospital-a") == a
    assert state.find_node_by_name("nobody") is None
    assert state.list_nodes() == [b, a]  # sorted by name


def test_get_unknown_node(state):
    with pytest.raises(NodeNotFound, match="node 42 not found"):
        state.get_node(42)


@pytest.mark.parametrize("bad", [-1, 2**63, True, "7"])
def test_get_node_rejects_invalid_ids(state, bad):
    with pytest.raises(InvalidArgument, match="node_id must be an int"):
        state.get_node(bad)


def test_presence(state, clock, make_node):
    a = make_node("hospital-a")
    b = make_node("bank-b")
    assert state.online_node_ids() == []

    clock.advance(5)
    online = state.set_node_online(a.node_id, True)
    assert online.online is True
    assert online.last_seen_at == clock.now
    state.set_node_online(b.node_id, True)
    assert state.online_node_ids() == sorted([a.node_id, b.node_id])

    clock.advance(5)
    assert state.touch_node(a.node_id).last_seen_at == clock.now
    assert state.set_node_online(b.node_id, False).online is False
    assert state.online_node_ids() == [a.node_id]

    assert state.mark_all_nodes_offline() == 1
    assert state.online_node_ids() == []


def test_presence_of_unknown_node(state):
    with pytest.raises(NodeNotFound, match="node 9 not found"):
        state.set_node_online(9, True)
    with pytest.raises(NodeNotFound, match="node 9 not found"):
        state.touch_node(9)


def test_errors_share_the_state_root(state):
    with pytest.raises(StateError, match="not found"):
        state.get_node(1)


def test_enrolment_follows_enrol_and_remove(state, make_node, fp):
    assert state.enrolment(fp("cert:hospital-a")) is None  # read (and remembered) empty
    node = make_node("hospital-a")
    enrolment = state.enrolment(node.cert_fingerprint)
    assert enrolment == Enrolment(
        node_id=node.node_id,
        name="hospital-a",
        cert_fingerprint=node.cert_fingerprint,
        signing_key_fingerprint=node.signing_key_fingerprint,
    )
    state.remove_node("hospital-a")
    assert state.enrolment(node.cert_fingerprint) is None
    again = make_node("hospital-a")
    assert state.enrolment(again.cert_fingerprint).node_id == again.node_id


def test_enrolment_ignores_presence_changes(state, make_node):
    node = make_node("hospital-a")
    before = state.enrolment(node.cert_fingerprint)
    state.set_node_online(node.node_id, True)
    state.touch_node(node.node_id)
    assert state.enrolment(node.cert_fingerprint) == before


def test_a_restarted_state_reads_enrolments_from_the_database(backend, make_node):
    node = make_node("hospital-a")
    reopened = backend.open()
    try:
        assert reopened.enrolment(node.cert_fingerprint).name == "hospital-a"
    finally:
        reopened.close()
