"""Egress: what may leave the site in a reply, checked before it is signed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from policy_harness import policy, request, train_reply

from appliance import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from appliance.message import Error, ErrorCode
from appliance.supernode.policy import (
    EgressRefused,
    PolicyRefused,
    check_egress,
    refusal_reply,
    verify_egress,
)
from appliance.wire import encode_record_dict
from secagg import MESSAGE_TYPES, Stage
from secagg.codec import encode_reply
from secagg.messages import ConsistencySignature

PATIENT = "Jane Roe, born 1961-03-02, HIV positive"


def test_ordinary_train_reply_passes_and_reports_its_facts():
    message = request()
    reply = train_reply(message)
    approved = verify_egress(policy(""), reply, request=message)
    frame = encode_record_dict(reply.content)
    assert approved.frame == frame
    assert approved.message is reply
    report = approved.report
    assert report.allowed
    assert report.size_bytes == len(frame)
    assert report.content_sha256 == hashlib.sha256(frame).hexdigest()
    assert report.record_names == ("arrays", "metrics")
    assert report.metric_keys == ("num-examples",)
    assert report.reply_to == message.metadata.message_id
    assert report.error_code is None


def _refused(site, reply, message, key):
    report = check_egress(site, reply, request=message)
    assert not report.allowed
    assert key in [v.key for v in report.violations]
    with pytest.raises(EgressRefused, match="reply blocked, nothing of it left the site") as info:
        verify_egress(site, reply, request=message)
    assert PATIENT not in str(info.value)  # nothing app-controlled goes back on the wire
    assert "Jane" not in str(info.value)
    return report, info.value


def test_patient_name_in_a_config_record_is_blocked():
    message = request()
    reply = train_reply(message, config=ConfigRecord({"lr": 0.1, "note": PATIENT}))
    report, refused = _refused(policy(""), reply, message, "egress.allow_config_strings")
    assert refused.key == "egress.allow_config_strings"
    assert "(also: egress.allowed_config_keys)" in refused.reason
    (violation,) = [v for v in report.violations if v.key == "egress.allow_config_strings"]
    assert "'note'" in violation.detail  # the site's own log may name the key
    assert refused.report == report
    echoed = train_reply(message, config=ConfigRecord({"lr": PATIENT}))  # a known key
    _, refused = _refused(policy(""), echoed, message, "egress.allow_config_strings")
    assert "also" not in refused.reason


def test_bytes_and_string_lists_are_blocked_too():
    message = request()
    for value in (PATIENT.encode(), [PATIENT], [b"x"]):
        reply = train_reply(message, config=ConfigRecord({"lr": value}))
        _refused(policy(""), reply, message, "egress.allow_config_strings")


def test_config_strings_pass_when_the_site_allows_them():
    message = request()
    reply = train_reply(message, config=ConfigRecord({"note": "ok"}))
    site = policy("[egress]\nallow_config_strings = true\n")
    assert check_egress(site, reply, request=message).allowed


def test_new_config_keys_need_the_allowlist():
    message = request()  # carries config key "lr"
    echoed = train_reply(message, config=ConfigRecord({"lr": 0.2}))
    assert check_egress(policy(""), echoed, request=message).allowed
    smuggled = train_reply(message, config=ConfigRecord({"jane-roe-hiv": 1}))
    _refused(policy(""), smuggled, message, "egress.allowed_config_keys")
    listed = policy("[egress]\nallowed_config_keys = ['jane-roe-hiv']\n")
    assert check_egress(listed, smuggled, request=message).allowed


def test_unlisted_metric_key_is_blocked():
    message = request()
    reply = train_reply(message)
    reply.content["metrics"]["jane-roe-hiv"] = 1.0
    _, refused = _refused(policy(""), reply, message, "egress.allowed_metric_keys")
    assert "1 key(s) not in allowed_metric_keys" in refused.reason
    site = policy("[egress]\nallowed_metric_keys = ['num-examples', 'jane-roe-hiv']\n")
    assert check_egress(site, reply, request=message).allowed


def test_dp_mod_metric_keys_are_allowed_when_the_site_requires_dp():
    message = request()
    reply = train_reply(message)
    reply.content["metrics"]["dp-clipping-norm"] = 1.0
    assert not check_egress(policy(""), reply, request=message).allowed
    assert check_egress(policy("[privacy]\nclip_norm = 1.0\n"), reply, request=message).allowed


def test_oversized_reply_is_blocked_before_encoding():
    message = request()
    big = ArrayRecord([np.zeros(300_000, dtype=np.float32)])
    reply = Message(RecordDict({"arrays": big}), reply_to=message)
    report, refused = _refused(
        policy("[egress]\nmax_reply_bytes = 1000000\n"), reply, message, "egress.max_reply_bytes"
    )
    assert report.size_bytes == 1_200_000
    assert report.content_sha256 == ""  # never encoded
    assert "1200000 bytes, over the site's 1000000" in refused.reason


def test_reply_just_over_the_limit_after_encoding_is_blocked():
    message = request()
    reply = train_reply(message)
    size = len(encode_record_dict(reply.content))
    assert check_egress(
        policy(f"[egress]\nmax_reply_bytes = {size}\n"), reply, request=message
    ).allowed
    _refused(
        policy(f"[egress]\nmax_reply_bytes = {size - 1}\n"),
        reply,
        message,
        "egress.max_reply_bytes",
    )


def test_unknown_record_name_is_blocked():
    message = request()
    reply = train_reply(message, **{"jane-roe": MetricRecord({"num-examples": 1})})
    _refused(policy(""), reply, message, "egress.allowed_record_names")
    listed = policy("[egress]\nallowed_record_names = ['arrays', 'metrics', 'jane-roe']\n")
    assert check_egress(listed, reply, request=message).allowed


def test_array_names_must_come_from_the_request_or_be_indices():
    message = request()
    indexed = Message(RecordDict({"arrays": ArrayRecord([np.ones(2)])}), reply_to=message)
    assert check_egress(policy(""), indexed, request=message).allowed
    named = Message(RecordDict({"arrays": ArrayRecord({"jane-roe": np.ones(2)})}), reply_to=message)
    _refused(policy(""), named, message, "egress.array_names")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_arrays_are_blocked(bad):
    message = request()
    reply = train_reply(message)
    reply.content["arrays"]["w"][0, 0] = bad
    _refused(policy(""), reply, message, "egress.array_values")


def test_a_reply_to_another_message_is_blocked():
    message, other = request(), request()
    _refused(policy(""), train_reply(other), message, "messages")


def test_error_replies_pass_with_reasons_trimmed_to_printable_text():
    message = request()
    reply = Message(
        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"KeyError:\n{PATIENT}\x00" * 20),
        reply_to=message,
    )
    approved = verify_egress(
        policy("[egress]\nmax_error_reason_chars = 20\n"), reply, request=message
    )
    assert approved.frame == b""
    assert approved.message.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert approved.message.error.reason == "KeyError: Jane Ro..."
    assert approved.message.metadata == reply.metadata
    assert approved.report.error_code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    silent = verify_egress(policy("[egress]\nmax_error_reason_chars = 0\n"), reply, request=message)
    assert silent.message.error.reason == ""


def test_a_refusal_reply_always_passes():
    message = request()
    reply = train_reply(message, config=ConfigRecord({"note": PATIENT}))
    with pytest.raises(PolicyRefused) as info:
        verify_egress(policy(""), reply, request=message)
    approved = verify_egress(policy(""), refusal_reply(message, info.value), request=message)
    assert approved.message.error.code == ErrorCode.POLICY_REFUSED
    assert approved.message.error.reason.startswith("site policy egress.allow_config_strings:")


def _secagg_exchange() -> tuple[Message, Message]:
    stage_type = MESSAGE_TYPES[Stage.CONSISTENCY]
    message = request(stage_type, RecordDict({"secagg": ConfigRecord({"stage": "consistency"})}))
    content = encode_reply(
        ConsistencySignature(round_id=bytes(32), sender=7, signature=bytes(range(64)))
    )
    return message, Message(content, reply_to=message)


def test_secagg_protocol_replies_pass_only_from_the_host_mod():
    message, reply = _secagg_exchange()
    assert check_egress(policy(""), reply, request=message, host_secagg=True).allowed
    assert not check_egress(policy(""), reply, request=message).allowed  # bytes otherwise


def test_secagg_reply_with_extra_content_gets_the_ordinary_rules():
    message, reply = _secagg_exchange()
    reply.content["secagg"]["smuggled"] = PATIENT
    report = check_egress(policy(""), reply, request=message, host_secagg=True)
    assert "egress.allow_config_strings" in [v.key for v in report.violations]


RECORD_KEYS = """
[egress]
allowed_metric_keys = ["num-examples", "dp-epsilon-record", "dp-delta-record"]
"""


def _dp_sgd_reply(message: Message, **metrics: float) -> Message:
    reply = train_reply(message)
    reply.content["metrics"] = MetricRecord({"num-examples": 10, **metrics})
    return reply


def test_a_dp_sgd_reply_within_the_plans_target_leaves():
    site, message = policy(RECORD_KEYS), request()
    reply = _dp_sgd_reply(message, **{"dp-epsilon-record": 1.97, "dp-delta-record": 1e-5})
    assert verify_egress(site, reply, request=message, record_epsilon_cap=2.0).report.allowed
    # Without a DP-SGD plan the same reply is judged by the ordinary rules only.
    assert verify_egress(site, reply, request=message).report.allowed


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"dp-epsilon-record": 2.5, "dp-delta-record": 1e-5}, "epsilon 2.5, above the run's"),
        ({}, "must report its record-level epsilon once"),
        ({"dp-epsilon-record": 1.0}, "malformed"),
        ({"dp-epsilon-record": -1.0, "dp-delta-record": 1e-5}, "malformed"),
    ],
)
def test_a_dp_sgd_reply_over_or_without_its_epsilon_is_blocked(metrics, reason):
    site, message = policy(RECORD_KEYS), request()
    reply = _dp_sgd_reply(message, **metrics)
    report = check_egress(site, reply, request=message)
    assert report.allowed  # the ordinary rules pass...
    with pytest.raises(EgressRefused) as info:  # ...the plan's target does not
        verify_egress(site, reply, request=message, record_epsilon_cap=2.0)
    assert info.value.key == "privacy.dp_sgd"
    (violation,) = info.value.report.violations
    assert reason in violation.reason


def test_the_dp_sgd_rule_reads_the_runs_plan():
    from appliance.supernode.budget import record_epsilon_cap

    sgd = '{"dp-mode": "dp-sgd", "dp-target-epsilon": 3.0, "num-server-rounds": 2}'
    central = '{"dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clipping-norm": 1.0, "num-server-rounds": 2}'  # noqa: E501
    assert record_epsilon_cap(sgd) == 3.0
    assert record_epsilon_cap(central) is None
    assert record_epsilon_cap('{"num-server-rounds": 2}') is None
