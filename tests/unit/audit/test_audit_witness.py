"""A site as witness: cosign only tree heads that extend the one it cosigned before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit import (
    SYSTEM,
    Action,
    AuditLog,
    AuditUsageError,
    BadSignature,
    LogForked,
    LogRolledBack,
    MalformedNote,
    NoteSigner,
    Witness,
    verify_checkpoint,
)
from audit.errors import InconsistentCheckpoints

NOON = datetime(2025, 5, 1, 12, tzinfo=UTC)


def make_log(path, signer, clock, n: int) -> AuditLog:
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    log = AuditLog(engine, signer=signer, clock=clock, checkpoint_every=1000)
    for i in range(n):
        log.append(SYSTEM, Action.NODE_CONNECTED, {"node": f"n{i}"})
    return log


@pytest.fixture
def link(tmp_path, signer, clock) -> AuditLog:
    return make_log(tmp_path / "link.db", signer, clock, 5)


@pytest.fixture
def site(witness, link) -> Witness:
    return Witness(signer=witness, log_key=link.verifier_key, clock=lambda: NOON)


def test_cosign_first_then_extend(site, link, witness):
    first = site.cosign(link.checkpoint())
    assert first.checkpoint.size == 5 and first.witness.last == first.checkpoint
    assert site.last is None  # immutable: the caller keeps the returned state
    link.append(SYSTEM, Action.RUN_STARTED, {"run_id": "r1"})
    note = link.checkpoint()
    second = first.witness.cosign(note, link.consistency_proof(5, 6).hashes)
    assert second.checkpoint.size == 6
    cosigned = verify_checkpoint(second.note(note), link.verifier_key, [witness.verifier_key()])
    assert cosigned.witnesses == {f"{witness.name}+{witness.verifier_key().key_id.hex()}"}
    assert cosigned.cosignatures[0].timestamp_s == int(NOON.timestamp())
    link.add_cosignature(6, second.signature, site.verifier_key)  # the SuperLink accepts it
    again = second.witness.cosign(note)  # same tree head again: fine, no proof needed
    assert again.checkpoint == second.checkpoint


def test_rolled_back_log_is_refused(site, link):
    link.append(SYSTEM, Action.RUN_STARTED)
    state = site.cosign(link.checkpoint()).witness  # saw size 6
    old = link.checkpoint_at(5)
    with pytest.raises(LogRolledBack, match="size 5 but this witness already cosigned size 6"):
        state.cosign(old)


def test_forked_log_is_refused(tmp_path, site, link, signer, clock):
    state = site.cosign(link.checkpoint()).witness  # saw size 5
    fork = make_log(tmp_path / "fork.db", signer, clock, 4)  # same key, other history
    fork.append(SYSTEM, Action.AUTH_REFUSED)
    fork.append(SYSTEM, Action.AUTH_REFUSED)
    with pytest.raises(LogForked, match="size 6 does not extend the one of size 5"):
        state.cosign(fork.checkpoint(), fork.consistency_proof(5, 6).hashes)
    with pytest.raises(InconsistentCheckpoints, match="does not extend"):
        state.cosign(fork.checkpoint(), ())  # no proof at all
    with pytest.raises(LogForked, match="root at size 5"):
        state.cosign(fork.checkpoint_at(5))  # same size, other root


def test_only_the_log_key_and_origin_count(site, link, signer, clock, tmp_path):
    impostor = NoteSigner(name=signer.name, private_key=Ed25519PrivateKey.generate())
    other = make_log(tmp_path / "other.db", impostor, clock, 5)
    with pytest.raises(BadSignature, match="carries no signature by the log key"):
        site.cosign(other.checkpoint())
    with pytest.raises(MalformedNote, match="no blank line"):
        site.cosign("garbage\n")
    renamed = make_log(tmp_path / "renamed.db", signer, clock, 1)
    elsewhere = AuditLog(renamed.engine, signer=signer, clock=clock, origin="other.example/log")
    elsewhere.append(SYSTEM, Action.RUN_STARTED)
    with pytest.raises(BadSignature, match=r"names origin 'other\.example/log'"):
        site.cosign(elsewhere.checkpoint())


def test_configuration_errors(witness, signer, link):
    with pytest.raises(AuditUsageError, match="cosigns with a type 0x04"):
        Witness(signer=signer, log_key=link.verifier_key, clock=lambda: NOON)
    with pytest.raises(AuditUsageError, match="log key must be a type 0x01"):
        Witness(signer=witness, log_key=witness.verifier_key(), clock=lambda: NOON)
    naive = Witness(signer=witness, log_key=link.verifier_key, clock=lambda: datetime(2025, 1, 1))
    with pytest.raises(AuditUsageError, match="timezone-aware"):
        naive.cosign(link.checkpoint())
    seen = Witness(signer=witness, log_key=link.verifier_key, clock=lambda: NOON)
    last = seen.cosign(link.checkpoint()).checkpoint
    with pytest.raises(AuditUsageError, match="remembered tree head is of log"):
        Witness(
            signer=witness, log_key=link.verifier_key, clock=lambda: NOON, origin="x", last=last
        )
