"""Signed envelopes: exact format, every tamper refused, replay window and nonce cache."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from certs import (
    EnvelopeKind,
    MalformedEnvelope,
    NonceCache,
    ReplayDetected,
    RequestVerifier,
    SignatureInvalid,
    SignedEnvelope,
    StaleRequest,
    sign_envelope,
    verify_envelope,
)
from certs.keys import generate_signing_key

METHOD = "/greenhouse.Fleet/PushMessages"
T0 = 1_900_000_000.0
KEY = generate_signing_key()
PUBLIC = KEY.public_key().public_bytes_raw()


def _signed(body: bytes = b"body", **kwargs) -> SignedEnvelope:
    kwargs.setdefault("timestamp_ms", int(T0 * 1000))
    return sign_envelope(KEY, kind=EnvelopeKind.REQUEST, method=METHOD, body=body, **kwargs)


def test_envelope_roundtrip_and_strict_parse() -> None:
    envelope = _signed()
    data = envelope.to_bytes()
    assert SignedEnvelope.parse(data) == envelope
    assert "signature" not in repr(envelope)
    for bad, message in [
        (data[:-1], "length does not match"),
        (data + b"x", "length does not match"),
        (b"XXXX" + data[4:], "unknown format tag"),
        (data[:4] + b"\x09" + data[5:], "unknown kind"),
        (b"short", "too short"),
    ]:
        with pytest.raises(MalformedEnvelope, match=message):
            SignedEnvelope.parse(bad)


def test_valid_signature_verifies() -> None:
    verify_envelope(
        _signed(), body=b"body", signing_key=PUBLIC, kind=EnvelopeKind.REQUEST, method=METHOD
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b"bodY"}, "body does not match the signed SHA-256 digest"),
        (
            {"signing_key": generate_signing_key().public_key().public_bytes_raw()},
            "signed with key .* but the certificate binds key",
        ),
        ({"method": "/greenhouse.Fleet/Other"}, "signature covers"),
        ({"kind": EnvelopeKind.REPLY}, "signature is for a request, expected a reply"),
    ],
    ids=["tampered body", "wrong key", "other method", "other kind"],
)
def test_tampering_is_refused(change: dict, message: str) -> None:
    arguments = {
        "body": b"body",
        "signing_key": PUBLIC,
        "kind": EnvelopeKind.REQUEST,
        "method": METHOD,
    } | change
    with pytest.raises(SignatureInvalid, match=message):
        verify_envelope(_signed(), **arguments)


def test_forged_signature_and_altered_fields_are_refused() -> None:
    envelope = _signed()
    for forged in (
        replace(envelope, signature=bytes(64)),
        replace(envelope, timestamp_ms=envelope.timestamp_ms + 1),
        replace(envelope, nonce=bytes(16)),
    ):
        with pytest.raises(SignatureInvalid, match="does not verify"):
            verify_envelope(forged, body=b"body", signing_key=PUBLIC, kind=EnvelopeKind.REQUEST)


def test_reply_envelope_stays_verifiable_from_stored_bytes() -> None:
    reply = sign_envelope(KEY, kind=EnvelopeKind.REPLY, method="run-7/msg-42", body=b"result")
    stored = reply.to_bytes()
    verify_envelope(
        SignedEnvelope.parse(stored),
        body=b"result",
        signing_key=PUBLIC,
        kind=EnvelopeKind.REPLY,
        method="run-7/msg-42",
    )


def _verifier(now: list[float], **kwargs) -> RequestVerifier:
    return RequestVerifier(clock=lambda: now[0], **kwargs)


def test_replay_window_and_nonce() -> None:
    now = [T0]
    verifier = _verifier(now)
    envelope = _signed()
    verifier.verify(
        envelope, kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
    )
    with pytest.raises(ReplayDetected, match="nonce was already used"):
        verifier.verify(
            envelope, kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
        )
    now[0] = T0 + 61
    with pytest.raises(StaleRequest, match=r"signed 61.0 s ago, outside the replay window of ±60"):
        verifier.verify(
            envelope, kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
        )
    now[0] = T0 - 61
    with pytest.raises(StaleRequest, match=r"stamped 61.0 s in the future"):
        verifier.verify(
            _signed(), kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
        )


def test_configurable_window() -> None:
    now = [T0 + 5]
    with pytest.raises(StaleRequest, match="replay window of ±2 s"):
        _verifier(now, window_s=2).verify(
            _signed(), kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
        )


def test_bad_signature_does_not_burn_the_nonce() -> None:
    verifier = _verifier([T0])
    envelope = _signed()
    with pytest.raises(SignatureInvalid):
        verifier.verify(
            envelope, kind=EnvelopeKind.REQUEST, method=METHOD, body=b"other", signing_key=PUBLIC
        )
    verifier.verify(
        envelope, kind=EnvelopeKind.REQUEST, method=METHOD, body=b"body", signing_key=PUBLIC
    )


def test_nonce_cache_is_bounded_and_eviction_never_opens_a_replay() -> None:
    cache = NonceCache(window_ms=60_000, max_entries=3)
    key = bytes(32)
    for i in range(5):
        cache.admit(key, bytes([i]) * 16, timestamp_ms=1000 + i, now_ms=1000 + i)
    assert len(cache) == 3
    with pytest.raises(StaleRequest, match="nonce cache full"):  # evicted nonce 0 or 1
        cache.admit(key, bytes([0]) * 16, timestamp_ms=1000, now_ms=1010)
    with pytest.raises(ReplayDetected):
        cache.admit(key, bytes([4]) * 16, timestamp_ms=1004, now_ms=1010)
    cache.admit(key, bytes([9]) * 16, timestamp_ms=1005, now_ms=1010)


def test_nonce_cache_forgets_only_outside_the_window() -> None:
    cache = NonceCache(window_ms=1000, max_entries=10)
    cache.admit(bytes(32), bytes(16), timestamp_ms=0, now_ms=0)
    cache.admit(bytes(32), b"\x01" * 16, timestamp_ms=500, now_ms=1000)
    assert len(cache) == 2
    cache.admit(bytes(32), b"\x02" * 16, timestamp_ms=1400, now_ms=1400)
    assert len(cache) == 2


def test_nonce_cache_is_thread_safe() -> None:
    cache = NonceCache(window_ms=60_000)
    accepted: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            cache.admit(bytes(32), b"n" * 16, timestamp_ms=1, now_ms=1)
            accepted.append(i)
        except ReplayDetected:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 1
