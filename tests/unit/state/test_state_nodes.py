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


def test_a_renewal_is_accepted_beside_the_enrolled_certificate(state, clock, make_node, fp):
    node = make_node("hospital-a")
    renewed = state.renew_node("hospital-a", fp("cert:new"), fp("key:new"), "admin")
    assert renewed.node_id == node.node_id
    assert renewed.cert_fingerprint == node.cert_fingerprint  # the old one is still enrolled
    assert renewed.renewal_cert_fingerprint == fp("cert:new")
    assert state.get_node(node.node_id) == renewed
    assert state.find_node_by_name("hospital-a") == renewed
    assert state.list_nodes() == [renewed]
    assert state.enrolment(node.cert_fingerprint).renewal is False
    assert state.enrolment(fp("cert:new")) == Enrolment(
        node_id=node.node_id,
        name="hospital-a",
        cert_fingerprint=fp("cert:new"),
        signing_key_fingerprint=fp("key:new"),
        renewal=True,
    )


def test_completing_a_renewal_retires_the_old_certificate(state, make_node, fp):
    node = make_node("hospital-a")
    state.renew_node("hospital-a", fp("cert:new"), fp("key:new"), "admin")
    done = state.complete_renewal(node.node_id, fp("cert:new"))
    assert (done.node_id, done.cert_fingerprint) == (node.node_id, fp("cert:new"))
    assert done.signing_key_fingerprint == fp("key:new")
    assert done.renewal_cert_fingerprint is None
    assert state.enrolment(node.cert_fingerprint) is None
    assert state.enrolment(fp("cert:new")).renewal is False
    assert state.complete_renewal(node.node_id, fp("cert:new")) == done  # twice: harmless
    # The retired certificate may be used again only by a new enrolment.
    assert state.enrol_node("hospital-b", node.cert_fingerprint, fp("k"), "admin").name


def test_completing_with_another_certificate_changes_nothing(state, make_node, fp):
    node = make_node("hospital-a")
    staged = state.renew_node("hospital-a", fp("cert:new"), fp("key:new"), "admin")
    assert state.complete_renewal(node.node_id, node.cert_fingerprint) == staged
    assert state.enrolment(fp("cert:new")).renewal is True


def test_a_second_renewal_replaces_the_staged_one(state, make_node, fp):
    make_node("hospital-a")
    state.renew_node("hospital-a", fp("cert:one"), fp("key:one"), "admin")
    again = state.renew_node("hospital-a", fp("cert:two"), fp("key:two"), "admin")
    assert again.renewal_cert_fingerprint == fp("cert:two")
    assert state.enrolment(fp("cert:one")) is None


def test_renewal_refusals(state, make_node, fp):
    node = make_node("hospital-a")
    make_node("hospital-b")
    with pytest.raises(NodeNotFound):
        state.renew_node("nowhere", fp("cert:new"), fp("key:new"), "admin")
    with pytest.raises(NodeAlreadyEnrolled, match="already enrolled as node 'hospital-b'"):
        state.renew_node("hospital-a", fp("cert:hospital-b"), fp("k"), "admin")
    with pytest.raises(NodeAlreadyEnrolled, match="already enrolled as node 'hospital-a'"):
        state.renew_node("hospital-a", node.cert_fingerprint, fp("k"), "admin")
    state.renew_node("hospital-b", fp("cert:new"), fp("key:new"), "admin")
    with pytest.raises(NodeAlreadyEnrolled, match="staged as the renewal of 'hospital-b'"):
        state.renew_node("hospital-a", fp("cert:new"), fp("k"), "admin")
    with pytest.raises(NodeAlreadyEnrolled, match="staged as the renewal of 'hospital-b'"):
        state.enrol_node("hospital-c", fp("cert:new"), fp("k"), "admin")
    with pytest.raises(InvalidArgument):
        state.renew_node("hospital-a", "not a fingerprint", fp("k"), "admin")
    with pytest.raises(NodeNotFound):
        state.complete_renewal(12345, fp("cert:new"))


def test_removing_a_node_drops_its_staged_renewal(state, make_node, fp):
    make_node("hospital-a")
    state.renew_node("hospital-a", fp("cert:new"), fp("key:new"), "admin")
    state.remove_node("hospital-a")
    assert state.enrolment(fp("cert:new")) is None
    assert state.enrol_node("hospital-a", fp("cert:new"), fp("key:new"), "admin").name
