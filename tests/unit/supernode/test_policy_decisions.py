"""Site decisions: which bundles run, which messages reach the app, which mods wrap it."""

from __future__ import annotations

import numpy as np
import pytest
from policy_harness import model, policy, request, train_reply

from appliance import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from appliance.clientapp import wrap_with_mods
from appliance.message import ErrorCode
from appliance.supernode.policy import (
    Admission,
    PolicyError,
    PolicyRefused,
    admit_bundle,
    admit_message,
    check_data_path,
    host_mods,
    refusal_reply,
    resource_limits,
)
from appliance.supernode.publisher import generate_publisher_key, load_publisher_signing_key
from appliance.supernode.publisher import sign_bundle as sign
from dp import keys
from dp.clipping import l2_norm

DIGEST = "ab" * 32
OTHER = "cd" * 32


# -- bundles ------------------------------------------------------------------------------


def test_empty_policy_refuses_every_bundle():
    with pytest.raises(PolicyRefused, match=r"apps.allow: bundle sha256:abab.* not on") as info:
        admit_bundle(policy(""), DIGEST)
    assert info.value.key == "apps.allow"


def test_allowlisted_bundle_is_admitted_in_either_spelling():
    site = policy(f"[apps]\nallow = ['sha256:{DIGEST}']\n")
    for spelling in (DIGEST, f"sha256:{DIGEST}", DIGEST.upper()):
        admitted = admit_bundle(site, spelling)
        assert admitted.sha256 == DIGEST
        assert admitted.via is Admission.ALLOWLIST
    with pytest.raises(PolicyRefused, match=r"apps\.allow"):
        admit_bundle(site, OTHER)


def test_malformed_digest_is_refused():
    with pytest.raises(PolicyRefused, match="digest is malformed"):
        admit_bundle(policy(f"[apps]\nallow = ['{DIGEST}']\n"), "sha256:abc")


@pytest.fixture
def publisher(tmp_path):
    private, _, key = generate_publisher_key(tmp_path / "pub")
    site = policy("[apps]\ntrusted_publishers = ['pub/publisher.pub']\n", base_dir=tmp_path)
    return site, load_publisher_signing_key(private), key


def test_publisher_signed_bundle_is_admitted(publisher):
    site, signing_key, key = publisher
    signature = sign(signing_key, DIGEST).to_bytes()
    admitted = admit_bundle(site, DIGEST, signature=signature)
    assert admitted.via is Admission.PUBLISHER
    assert admitted.publisher == key.fingerprint


def test_unsigned_bundle_is_refused_when_publishers_are_trusted(publisher):
    site, _, _ = publisher
    with pytest.raises(
        PolicyRefused, match=r"trusted_publishers: .*carries no publisher signature"
    ):
        admit_bundle(site, DIGEST)


def test_signature_for_another_bundle_is_refused(publisher):
    site, signing_key, _ = publisher
    signature = sign(signing_key, OTHER).to_bytes()
    with pytest.raises(PolicyRefused, match=r"signature is for bundle sha256:cdcd"):
        admit_bundle(site, DIGEST, signature=signature)


def test_garbage_signature_is_refused(publisher):
    site, _, _ = publisher
    with pytest.raises(PolicyRefused, match=r"trusted_publishers: .*not UTF-8 JSON"):
        admit_bundle(site, DIGEST, signature=b"\xff not json")


def test_signature_without_trusted_publishers_is_refused(publisher):
    _, signing_key, _ = publisher
    signature = sign(signing_key, DIGEST).to_bytes()
    with pytest.raises(PolicyRefused, match=r"apps\.allow"):
        admit_bundle(policy(""), DIGEST, signature=signature)


# -- messages -----------------------------------------------------------------------------


MESSAGES = {
    "train, no policy": ("", "train", None),
    "evaluate, no policy": ("", "evaluate", None),
    "query refused": ("", "query", "egress.allow_query"),
    "query allowed": ("[egress]\nallow_query = true\n", "query.stats", None),
    "system refused": ("[egress]\nallow_query = true\n", "system.ping", "messages"),
    "plain train under secagg": (
        "[privacy]\nrequire_secure_aggregation = true\n",
        "train",
        "privacy.require_secure_aggregation",
    ),
    "train action under secagg": (
        "[privacy]\nrequire_secure_aggregation = true\n",
        "train.fast",
        "privacy.require_secure_aggregation",
    ),
    "secagg stage under secagg": (
        "[privacy]\nrequire_secure_aggregation = true\n",
        "train.secagg-setup",
        None,
    ),
    "evaluate under secagg": ("[privacy]\nrequire_secure_aggregation = true\n", "evaluate", None),
}


@pytest.mark.parametrize(("text", "message_type", "key"), MESSAGES.values(), ids=list(MESSAGES))
def test_admit_message(text, message_type, key):
    site = policy(text)
    message = request(message_type)
    if key is None:
        admit_message(site, message)
        return
    with pytest.raises(PolicyRefused) as info:
        admit_message(site, message)
    assert info.value.key == key


def test_refusal_reply_names_the_key():
    message = request("train")
    with pytest.raises(PolicyRefused) as info:
        admit_message(policy("[privacy]\nrequire_secure_aggregation = true\n"), message)
    reply = refusal_reply(message, info.value)
    assert reply.error.code == ErrorCode.POLICY_REFUSED
    assert reply.error.reason.startswith("site policy privacy.require_secure_aggregation: ")
    assert "at least 3 nodes" in reply.error.reason
    assert reply.metadata.reply_to_message_id == message.metadata.message_id


# -- host mods ----------------------------------------------------------------------------


def _run(mods, message, handler):
    context = Context(run_id=1, node_id=7, node_config={}, run_config={})
    return wrap_with_mods(mods, handler)(message, context)


def _no_credentials(_context):
    raise AssertionError("credentials are not needed to refuse")


def test_no_policy_no_credentials_no_mods():
    assert host_mods(policy(""), secagg_credentials=None) == []


def test_secagg_is_installed_when_credentials_exist():
    mods = host_mods(policy(""), secagg_credentials=_no_credentials)
    assert len(mods) == 1
    reply = _run(mods, request("train"), lambda m, _c: train_reply(m))  # not required: passes
    assert reply.has_content()


def test_required_secagg_mod_refuses_plain_train_with_the_site_cohort():
    site = policy("[privacy]\nrequire_secure_aggregation = true\nmin_secagg_cohort = 4\n")
    mods = host_mods(site, secagg_credentials=_no_credentials)
    reply = _run(mods, request("train"), lambda m, _c: train_reply(m))
    assert reply.error.code == ErrorCode.POLICY_REFUSED
    assert "at least 4 participants" in reply.error.reason


def test_required_secagg_without_credentials_is_a_policy_error():
    site = policy("[privacy]\nrequire_secure_aggregation = true\n")
    with pytest.raises(PolicyError, match="require_secure_aggregation = true needs the node"):
        host_mods(site, secagg_credentials=None)


CENTRAL = """
[privacy]
require_dp = "central"
clip_norm = 0.5
max_epsilon_per_run = 2
max_epsilon_total = 10
"""


def _far_reply(msg: Message, _ctx: Context) -> Message:
    moved = ArrayRecord({k: v + 100 for k, v in msg.content["arrays"].items()})
    return Message(RecordDict({"arrays": moved}), reply_to=msg)


def _update_norm(reply: Message, sent: ArrayRecord) -> float:
    arrays = reply.content["arrays"]
    return l2_norm([arrays[k] - sent[k] for k in sent])


def test_central_dp_clips_every_update_to_the_site_norm():
    mods = host_mods(policy(CENTRAL), secagg_credentials=None)
    message = request("train")
    reply = _run(mods, message, _far_reply)
    assert _update_norm(reply, model()) <= 0.5 * (1 + 1e-5)
    assert reply.content["metrics"][keys.CLIPPING_NORM] == 0.5


def test_central_dp_refuses_a_larger_server_norm():
    mods = host_mods(policy(CENTRAL), secagg_credentials=None)
    content = RecordDict({"arrays": model(), "config": ConfigRecord({keys.CLIPPING_NORM: 5.0})})
    reply = _run(mods, request("train", content), _far_reply)
    assert reply.error.code == ErrorCode.POLICY_REFUSED
    assert reply.error.reason.startswith("site policy privacy.clip_norm: ")


def test_dp_mod_refuses_a_reply_it_cannot_clip():
    mods = host_mods(policy(CENTRAL), secagg_credentials=None)
    reply = _run(mods, request("train"), lambda m, _c: Message(RecordDict(), reply_to=m))
    assert reply.error.code == ErrorCode.POLICY_REFUSED
    assert "InvalidUpdateError" in reply.error.reason


def test_clip_norm_alone_clips():
    mods = host_mods(policy("[privacy]\nclip_norm = 0.25\n"), secagg_credentials=None)
    reply = _run(mods, request("train"), _far_reply)
    assert _update_norm(reply, model()) <= 0.25 * (1 + 1e-5)


def test_local_dp_noises_and_reports_its_spend():
    site = policy(
        """
        [privacy]
        require_dp = "local"
        clip_norm = 1.0
        local_epsilon_per_round = 1.0
        local_delta = 1e-5
        max_epsilon_per_run = 5
        max_epsilon_total = 10
        """
    )
    mods = host_mods(site, secagg_credentials=None, unsafe_dp_rng=np.random.default_rng(1))
    reply = _run(mods, request("train"), _far_reply)
    metrics = reply.content["metrics"]
    assert metrics["dp-epsilon-site"] == pytest.approx(1.0, rel=1e-3)
    assert metrics[keys.LOCAL_RELEASES] == 1
    assert _update_norm(reply, model()) > 1.0  # clipped to 1, then noised


def test_evaluate_is_not_touched_by_dp_mods():
    mods = host_mods(policy(CENTRAL), secagg_credentials=None)
    reply = _run(mods, request("evaluate"), _far_reply)
    assert _update_norm(reply, model()) > 100


# -- execution ----------------------------------------------------------------------------


def test_resource_limits_follow_execution():
    limits = resource_limits(policy("[execution]\nmemory_mb = 512\ncpu_seconds = 9\n"))
    assert limits.memory_bytes == 512 * 2**20
    assert limits.cpu_seconds == 9
    assert limits.isolate_network
    assert not resource_limits(policy("[execution]\nnetwork = 'allowed'\n")).isolate_network


def test_check_data_path(tmp_path):
    assert check_data_path(policy("")) == []
    missing = policy(f"[execution]\ndata_path = '{tmp_path / 'none'}'\n")
    assert "does not exist" in check_data_path(missing)[0]
    writable = policy(f"[execution]\ndata_path = '{tmp_path}'\n")
    assert "is writable; mount it read-only" in check_data_path(writable)[0]
