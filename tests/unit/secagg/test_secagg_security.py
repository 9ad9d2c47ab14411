"""What the server sees, and what a malicious server or client cannot get away with."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_harness import SeededRng, drive_round, make_config, node_ids

from secagg import (
    AdvertisedKeys,
    ConsistencyRequest,
    MaskedInput,
    ProtocolViolation,
    ShareKeysRequest,
    Stage,
    TooManyDropouts,
    UnmaskReply,
    UnmaskRequest,
    UnsafeLocalKeyring,
)
from secagg.crypto import advertise_payload, public_key
from secagg.primitives.shamir import random_element

# Chi-square critical value for 255 degrees of freedom at p = 0.001.
CHI2_255_P001 = 330.52


def _byte_fields(message: object) -> list[bytes]:
    out = []
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            out.append(value)
        elif isinstance(value, np.ndarray):
            out.append(value.tobytes())
        elif isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    out.extend(_byte_fields(item))
                elif isinstance(item, tuple):
                    out.extend(v.to_bytes(32, "little") for v in item if isinstance(v, int))
    return out


def test_masked_input_looks_uniform_and_differs_from_the_plaintext() -> None:
    n, d = 5, 100_000
    config = make_config(n, d, seed=21, clip_range=1.0)
    ids = node_ids(n, seed=21)
    values = {i: np.full(d, 0.25) for i in ids}  # a maximally structured plaintext
    outcome = drive_round(config, ids, values=values, seed=21)
    masked = next(m for m in outcome.transcript if isinstance(m, MaskedInput))
    assert masked.vector.dtype == np.uint32  # half of Flower's int64 upload
    weight = outcome.weights[masked.sender]
    plain = np.round((0.25 + 1.0) / 2.0 * 65535) * weight
    assert np.count_nonzero(masked.vector[:-1] == plain) < 5  # chance: d / 2^32
    counts = np.bincount(masked.vector >> 24, minlength=256)
    expected = masked.vector.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_255_P001, f"masked vector is not uniform-looking: chi2={chi2:.1f}"


def test_the_server_transcript_never_holds_a_plaintext_update() -> None:
    n, d = 10, 64
    config = make_config(n, d, seed=22)
    ids = node_ids(n, seed=22)
    outcome = drive_round(config, ids, drops={Stage.CONSISTENCY: {ids[3]}}, seed=22)
    seen = b"".join(b for message in outcome.transcript for b in _byte_fields(message))
    for node, value in outcome.values.items():
        for encoding in (value.tobytes(), value.astype(np.float32).tobytes()):
            assert encoding[:16] not in seen, f"plaintext of node {node} reached the server"
        quantized = np.round((np.clip(value, -1, 1) + 1) / 2 * 65535)
        weighted = (quantized * outcome.weights[node]).astype(np.uint32)
        assert weighted.tobytes()[:16] not in seen
    kinds = {type(m).__name__ for m in outcome.transcript}
    assert kinds == {
        "AdvertisedKeys",
        "ShareKeysReply",
        "MaskedInput",
        "ConsistencySignature",
        "UnmaskReply",
    }


def test_no_client_reveals_both_shares_of_a_peer() -> None:
    ids = node_ids(10, seed=23)
    outcome = drive_round(
        make_config(10, 4, seed=23), ids, drops={Stage.MASKED_INPUT: {ids[1], ids[2]}}, seed=23
    )
    for message in outcome.transcript:
        if isinstance(message, UnmaskReply):
            seeds = {owner for owner, _ in message.self_mask_shares}
            keys = {owner for owner, _ in message.key_shares}
            assert not seeds & keys
            assert keys <= {ids[1], ids[2]}
            assert not seeds & {ids[1], ids[2]}


def _replace_entry(stage, requests, node, **changes):
    if stage is not Stage.SHARE_KEYS:
        return requests
    out = []
    for request in requests:
        roster = tuple(
            dataclasses.replace(e, **changes) if e.node_id == node else e for e in request.roster
        )
        out.append(dataclasses.replace(request, roster=roster))
    return out


def test_a_forged_public_key_is_rejected() -> None:
    ids = node_ids(5, seed=24)
    forged = public_key(random_element(SeededRng(5)))  # the server's own key, unsigned

    def swap(stage, requests):
        return _replace_entry(stage, requests, ids[2], mask_public_key=forged)

    with pytest.raises(ProtocolViolation, match="not signed by its CA-bound") as info:
        drive_round(make_config(5, 4, seed=24), ids, tamper_requests=swap, seed=24)
    assert info.value.node_id == ids[2]
    assert info.value.stage == Stage.SHARE_KEYS


def test_a_node_the_ca_does_not_know_is_rejected() -> None:
    ids = node_ids(5, seed=25)
    stranger = UnsafeLocalKeyring(SeededRng(7)).credentials(ids[1])  # another "federation"

    def impersonate(stage, requests):
        if stage is not Stage.SHARE_KEYS:
            return requests
        entry = next(e for e in requests[0].roster if e.node_id == ids[1])
        config = make_config(5, 4, seed=25)
        payload = advertise_payload(
            config_digest=config.digest(),
            node_id=ids[1],
            cipher_public_key=entry.cipher_public_key,
            mask_public_key=entry.mask_public_key,
            commitment=entry.self_mask_commitment,
        )
        return _replace_entry(
            stage,
            requests,
            ids[1],
            credential=stranger.credential,
            signature=stranger.signer.sign(payload),
        )

    with pytest.raises(ProtocolViolation, match=r"credential of node \d+ refused") as info:
        drive_round(make_config(5, 4, seed=25), ids, tamper_requests=impersonate, seed=25)
    assert info.value.node_id == ids[1]


def test_one_party_cannot_appear_twice() -> None:
    """A site signing for a second node id (a sybil) is caught: signing keys must differ."""
    ids = node_ids(5, seed=26)
    keyring = UnsafeLocalKeyring(SeededRng(26))
    config = make_config(5, 4, seed=26)

    def sybil(stage, requests):
        if stage is not Stage.SHARE_KEYS:
            return requests
        honest = keyring.credentials(ids[0])
        entry = next(e for e in requests[0].roster if e.node_id == ids[4])
        payload = advertise_payload(
            config_digest=config.digest(),
            node_id=ids[4],
            cipher_public_key=entry.cipher_public_key,
            mask_public_key=entry.mask_public_key,
            commitment=entry.self_mask_commitment,
        )
        keyring._keys[ids[4]] = keyring._keys[ids[0]]  # the directory now vouches twice
        return _replace_entry(
            stage,
            requests,
            ids[4],
            credential=honest.credential,
            signature=honest.signer.sign(payload),
        )

    with pytest.raises(ProtocolViolation, match="share a key"):
        drive_round(config, ids, tamper_requests=sybil, keyring=keyring, seed=26)


def test_a_server_altering_a_clients_own_keys_is_refused() -> None:
    ids = node_ids(4, seed=27)
    other = b"\x01" * 32

    def alter_everywhere(stage, requests):
        if stage is not Stage.SHARE_KEYS:
            return requests
        return [
            dataclasses.replace(
                r,
                roster=tuple(
                    dataclasses.replace(e, self_mask_commitment=other)
                    if e.node_id == r.receiver
                    else e
                    for e in r.roster
                ),
            )
            for r in requests
        ]

    with pytest.raises(ProtocolViolation, match="alters this node's advertised keys") as info:
        drive_round(make_config(4, 2, seed=27), ids, tamper_requests=alter_everywhere, seed=27)
    assert info.value.node_id == 0


@pytest.mark.parametrize(
    ("field", "match"),
    [("neighbours", "not this node's in the round's graph"), ("threshold", "claims threshold")],
)
def test_clients_recompute_neighbours_and_threshold(field: str, match: str) -> None:
    ids = node_ids(10, seed=28)

    def lie(stage, requests):
        if stage is not Stage.SHARE_KEYS:
            return requests
        out = []
        for r in requests:
            if field == "threshold":
                out.append(dataclasses.replace(r, threshold=r.threshold - 1))
            else:
                others = frozenset(e.node_id for e in r.roster) - {r.receiver}
                fake = frozenset(sorted(others - r.neighbours)[:1]) | set(sorted(r.neighbours)[1:])
                out.append(dataclasses.replace(r, neighbours=fake))
        return out

    with pytest.raises(ProtocolViolation, match=match) as info:
        drive_round(make_config(10, 2, seed=28), ids, tamper_requests=lie, seed=28)
    assert info.value.node_id == 0  # the server is at fault


def _with_survivors(request: UnmaskRequest, survivors: frozenset[int]) -> UnmaskRequest:
    signatures = tuple(s for s in request.signatures if s[0] in survivors)
    return dataclasses.replace(request, survivors=survivors, signatures=signatures)


def test_inconsistent_survivor_sets_are_detected() -> None:
    """The server tells half the nodes one node dropped and the other half it survived."""
    ids = node_ids(10, seed=29)
    victim = ids[5]
    views: dict[int, frozenset[int]] = {}

    def split_views(stage, requests):
        if stage is Stage.CONSISTENCY:
            out = []
            for i, r in enumerate(requests):
                survivors = (
                    r.survivors - {victim} if i % 2 and r.receiver != victim else r.survivors
                )
                views[r.receiver] = survivors
                out.append(dataclasses.replace(r, survivors=survivors))
            return out
        if stage is Stage.UNMASK:
            return [_with_survivors(r, views[r.receiver]) for r in requests]
        return requests

    with pytest.raises(ProtocolViolation, match="did not confirm the same"):
        drive_round(make_config(10, 2, seed=29), ids, tamper_requests=split_views, seed=29)


def test_a_survivor_set_changed_after_confirmation_is_refused() -> None:
    ids = node_ids(10, seed=30)

    def switch(stage, requests):
        if stage is not Stage.UNMASK:
            return requests
        return [_with_survivors(r, r.survivors - {ids[9]}) for r in requests]

    with pytest.raises(ProtocolViolation, match="differs from the one this node confirmed"):
        drive_round(make_config(10, 2, seed=30), ids, tamper_requests=switch, seed=30)


def test_a_server_claiming_mass_dropouts_gets_nothing() -> None:
    """Isolating a victim (reporting almost everyone dropped) is refused before any share."""
    ids = node_ids(10, seed=31)

    def isolate(stage, requests):
        if stage is not Stage.CONSISTENCY:
            return requests
        keep = frozenset(ids[:3])
        return [
            ConsistencyRequest(receiver=r.receiver, round_id=r.round_id, survivors=keep)
            for r in requests
            if r.receiver in keep
        ]

    with pytest.raises(TooManyDropouts, match="needs at least 8"):
        drive_round(make_config(10, 2, seed=31), ids, tamper_requests=isolate, seed=31)


def test_unmask_without_enough_confirmations_is_refused() -> None:
    ids = node_ids(10, seed=32)

    def few(stage, requests):
        if stage is not Stage.UNMASK:
            return requests
        return [
            dataclasses.replace(
                r, signatures=tuple(s for s in r.signatures if s[0] in set(ids[:5]) | {r.receiver})
            )
            for r in requests
        ]

    with pytest.raises(TooManyDropouts, match="confirmed"):
        drive_round(make_config(10, 2, seed=32), ids, tamper_requests=few, seed=32)


def test_a_bad_share_fails_the_round_instead_of_a_wrong_sum() -> None:
    ids = node_ids(10, seed=33)

    def corrupt(stage, replies):
        if stage is not Stage.UNMASK:
            return replies
        first = replies[0]
        bad = tuple((owner, (value + 1) % 2**255) for owner, value in first.self_mask_shares)
        return [dataclasses.replace(first, self_mask_shares=bad), *replies[1:]]

    with pytest.raises(ProtocolViolation, match="does not match its commitment"):
        drive_round(make_config(10, 2, seed=33), ids, tamper_replies=corrupt, seed=33)


def test_the_server_rejects_rule_breaking_messages_and_stays_usable() -> None:
    from secagg import ServerRound

    config = make_config(4, 2, seed=34)
    ids = node_ids(4, seed=34)
    outcome = drive_round(config, ids, seed=34)
    advertised = [m for m in outcome.transcript if isinstance(m, AdvertisedKeys)]
    server = ServerRound(config, ids)
    server.start()
    server.receive(advertised[0])
    with pytest.raises(ProtocolViolation, match="replied twice"):
        server.receive(advertised[0])
    with pytest.raises(ProtocolViolation, match="not expected"):
        server.receive(dataclasses.replace(advertised[1], node_id=12345))
    masked = next(m for m in outcome.transcript if isinstance(m, MaskedInput))
    with pytest.raises(ProtocolViolation, match="sent a MaskedInput during setup"):
        server.receive(masked)
    for message in advertised[1:]:
        server.receive(message)
    requests = server.advance()
    assert all(isinstance(r, ShareKeysRequest) for r in requests)
