"""site.toml parsing: safe defaults, every validation error path, the policy hash."""

from __future__ import annotations

import os

import pytest
from policy_harness import policy, write_policy

from appliance.supernode.policy import (
    ApprovalMode,
    DPMode,
    Network,
    PolicyError,
    load_policy,
    parse_policy,
)
from appliance.supernode.publisher import generate_publisher_key

DIGEST = "ab" * 32


def test_empty_policy_is_valid_and_safe():
    site = policy("")
    assert site.apps.allow == frozenset()
    assert site.apps.trusted_publishers == ()
    assert not site.privacy.require_secure_aggregation
    assert site.privacy.require_dp is None
    assert site.egress.allowed_metric_keys == {"num-examples"}
    assert not site.egress.allow_config_strings
    assert not site.egress.allow_query
    assert site.execution.network is Network.NONE
    assert site.approval.mode is ApprovalMode.AUTO


def test_full_policy_parses():
    site = policy(
        f"""
        [apps]
        allow = ["sha256:{DIGEST}", "{"CD" * 32}"]
        [privacy]
        require_secure_aggregation = true
        min_secagg_cohort = 5
        require_dp = "local"
        clip_norm = 1
        local_epsilon_per_round = 0.5
        local_delta = 1e-6
        max_epsilon_per_run = 4
        max_epsilon_total = 20
        [egress]
        max_reply_bytes = 1048576
        allowed_metric_keys = ["num-examples", "loss"]
        allowed_config_keys = ["stage"]
        allow_query = true
        max_error_reason_chars = 100
        [execution]
        memory_mb = 1024
        cpu_seconds = 60
        wall_seconds = 120
        network = "allowed"
        data_path = "/srv/data"
        [approval]
        mode = "manual"
        """
    )
    assert site.apps.allow == {DIGEST, "cd" * 32}
    assert site.privacy.min_secagg_cohort == 5
    assert site.privacy.require_dp is DPMode.LOCAL
    assert site.privacy.clip_norm == 1.0
    assert isinstance(site.privacy.clip_norm, float)
    assert site.egress.allowed_metric_keys == {"num-examples", "loss"}
    assert site.execution.network is Network.ALLOWED
    assert site.approval.mode is ApprovalMode.MANUAL


def test_secagg_required_defaults_to_cohort_of_three():
    site = policy("[privacy]\nrequire_secure_aggregation = true\n")
    assert site.privacy.min_secagg_cohort == 3


BAD = {
    "invalid toml": ("[egress\n", r"site.toml: invalid TOML"),
    "unknown section": ("[network]\n", r"unknown section \[network\]"),
    "unknown key": (
        "[egress]\nmax_reply_size = 1\n",
        r"unknown key \[egress\] max_reply_size \(known: .*max_reply_bytes",
    ),
    "section not a table": ("egress = 1\n", r"\[egress\] must be a table, got 1"),
    "reply bytes a string": (
        "[egress]\nmax_reply_bytes = 'big'\n",
        r"^site.toml: \[egress\] max_reply_bytes must be a positive integer, got 'big'$",
    ),
    "reply bytes zero": ("[egress]\nmax_reply_bytes = 0\n", r"max_reply_bytes must be a positive"),
    "reply bytes bool": ("[egress]\nmax_reply_bytes = true\n", r"got True"),
    "allow not a list": ("[apps]\nallow = 'sha256:ab'\n", r"\[apps\] allow must be a list"),
    "allow not a digest": (
        "[apps]\nallow = ['sha256:1234']\n",
        r"\[apps\] allow must be a list of bundle hashes",
    ),
    "allow duplicates": (
        f"[apps]\nallow = ['{DIGEST}', '{DIGEST}']\n",
        r"\[apps\] allow must be a list without duplicates",
    ),
    "metric keys not strings": (
        "[egress]\nallowed_metric_keys = [1]\n",
        r"allowed_metric_keys must be a list of non-empty strings",
    ),
    "query not bool": ("[egress]\nallow_query = 'no'\n", r"allow_query must be true or false"),
    "reason chars too many": (
        "[egress]\nmax_error_reason_chars = 5000\n",
        r"max_error_reason_chars must be an integer >= 0 and at most 4096, got 5000",
    ),
    "secagg not bool": (
        "[privacy]\nrequire_secure_aggregation = 1\n",
        r"require_secure_aggregation must be true or false",
    ),
    "cohort too small": (
        "[privacy]\nrequire_secure_aggregation = true\nmin_secagg_cohort = 2\n",
        r"min_secagg_cohort must be an integer >= 3",
    ),
    "cohort without secagg": (
        "[privacy]\nmin_secagg_cohort = 4\n",
        r"\[privacy\] min_secagg_cohort needs require_secure_aggregation = true",
    ),
    "unknown dp mode": (
        "[privacy]\nrequire_dp = 'global'\n",
        r"require_dp must be 'local' or 'central' or 'distributed' or 'dp-sgd', got 'global'",
    ),
    "distributed dp without secagg": (
        "[privacy]\nrequire_dp = 'distributed'\nclip_norm = 1.0\n",
        r"require_dp = 'distributed' needs require_secure_aggregation = true",
    ),
    "dp-sgd without record caps": (
        "[privacy]\nrequire_dp = 'dp-sgd'\nmax_epsilon_per_run = 1\nmax_epsilon_total = 2\n",
        r"require_dp = 'dp-sgd' needs max_record_epsilon_per_run, max_record_epsilon_total",
    ),
    "distributed dp without caps": (
        "[privacy]\nrequire_secure_aggregation = true\nrequire_dp = 'distributed'\n",
        r"require_dp = 'distributed' needs clip_norm, max_epsilon_per_run, max_epsilon_total",
    ),
    "dp without clip norm": (
        "[privacy]\nrequire_dp = 'central'\nmax_epsilon_per_run = 1\nmax_epsilon_total = 2\n",
        r"require_dp = 'central' needs clip_norm$",
    ),
    "dp without caps": (
        "[privacy]\nrequire_dp = 'central'\nclip_norm = 1.0\n",
        r"needs max_epsilon_per_run, max_epsilon_total",
    ),
    "local dp without its epsilon": (
        "[privacy]\nrequire_dp = 'local'\nclip_norm = 1.0\n"
        "max_epsilon_per_run = 1\nmax_epsilon_total = 2\n",
        r"needs local_epsilon_per_round, local_delta",
    ),
    "local keys without local dp": (
        "[privacy]\nlocal_delta = 1e-5\n",
        r"local_delta is only used with require_dp = 'local'",
    ),
    "clip norm negative": ("[privacy]\nclip_norm = -1.0\n", r"clip_norm must be a finite number"),
    "clip norm inf": ("[privacy]\nclip_norm = inf\n", r"clip_norm must be a finite number > 0"),
    "delta out of range": (
        "[privacy]\nrequire_dp = 'local'\nlocal_delta = 1.5\n",
        r"local_delta must be a number in \(0, 1\)",
    ),
    "per-run cap over total": (
        "[privacy]\nmax_epsilon_per_run = 5\nmax_epsilon_total = 2\n",
        r"max_epsilon_per_run \(5\) exceeds max_epsilon_total \(2\)",
    ),
    "round epsilon over run cap": (
        "[privacy]\nrequire_dp = 'local'\nclip_norm = 1.0\nlocal_epsilon_per_round = 3\n"
        "local_delta = 1e-6\nmax_epsilon_per_run = 2\nmax_epsilon_total = 4\n",
        r"local_epsilon_per_round \(3\) exceeds max_epsilon_per_run \(2\)",
    ),
    "memory too small": ("[execution]\nmemory_mb = 16\n", r"memory_mb must be an integer >= 256"),
    "cpu float": ("[execution]\ncpu_seconds = 1.5\n", r"cpu_seconds must be a positive integer"),
    "unknown network": (
        "[execution]\nnetwork = 'host'\n",
        r"network must be 'none' or 'allowed', got 'host'",
    ),
    "relative data path": (
        "[execution]\ndata_path = 'data'\n",
        r"data_path must be an absolute path, got 'data'",
    ),
    "unknown approval": (
        "[approval]\nmode = 'maybe'\n",
        r"\[approval\] mode must be 'auto' or 'manual', got 'maybe'",
    ),
    "publisher missing": (
        "[apps]\ntrusted_publishers = ['nope.pub']\n",
        r"\[apps\] trusted_publishers\[0\]: cannot read publisher key",
    ),
}


@pytest.mark.parametrize(("text", "error"), BAD.values(), ids=list(BAD))
def test_invalid_policy_names_the_key(text, error, tmp_path):
    with pytest.raises(PolicyError, match=error):
        parse_policy(text, base_dir=tmp_path)


def test_long_values_are_shortened_in_errors():
    with pytest.raises(PolicyError, match=r"got 'xxxxx.*\.\.\.$"):
        parse_policy(f"[approval]\nmode = '{'x' * 500}'\n")


def test_trusted_publishers_load_relative_to_the_file(tmp_path):
    _, _, key = generate_publisher_key(tmp_path / "keys")
    path = write_policy(tmp_path, "[apps]\ntrusted_publishers = ['keys/publisher.pub']\n")
    site = load_policy(path)
    assert site.apps.trusted_publishers == (key,)
    assert site.source == "site.toml"


def test_publisher_listed_twice_is_refused(tmp_path):
    _, public, _ = generate_publisher_key(tmp_path / "keys")
    text = f"[apps]\ntrusted_publishers = ['keys/publisher.pub', '{public}']\n"
    with pytest.raises(PolicyError, match=r"trusted_publishers\[1\]: .* same key"):
        load_policy(write_policy(tmp_path, text))


def test_publisher_file_that_is_not_a_key_is_refused(tmp_path):
    (tmp_path / "bad.pub").write_text("hello\n")
    with pytest.raises(PolicyError, match=r"trusted_publishers\[0\]: .*not a PEM public key"):
        load_policy(write_policy(tmp_path, "[apps]\ntrusted_publishers = ['bad.pub']\n"))


def test_writable_policy_file_is_refused(tmp_path):
    path = write_policy(tmp_path, "")
    path.chmod(0o666)
    with pytest.raises(PolicyError, match=r"writable by group or others \(mode 0666\)"):
        load_policy(path)


def test_writable_publisher_key_is_refused(tmp_path):
    _, public, _ = generate_publisher_key(tmp_path / "keys")
    public.chmod(0o664)
    path = write_policy(tmp_path, "[apps]\ntrusted_publishers = ['keys/publisher.pub']\n")
    with pytest.raises(PolicyError, match=r"trusted_publishers\[0\]: publisher key .* writable"):
        load_policy(path)


def test_missing_oversized_and_binary_files_are_refused(tmp_path):
    with pytest.raises(PolicyError, match=r"cannot read site policy"):
        load_policy(tmp_path / "absent.toml")
    big = write_policy(tmp_path, "# " + "x" * (1 << 20), name="big.toml")
    with pytest.raises(PolicyError, match=r"big.toml: larger than"):
        load_policy(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    os.chmod(binary, 0o600)
    with pytest.raises(PolicyError, match=r"bin.toml: not UTF-8"):
        load_policy(binary)


def test_policy_hash_is_canonical():
    first = policy(f"[apps]\nallow = ['{DIGEST}', '{'cd' * 32}']\n[privacy]\nclip_norm = 1\n")
    second = policy(
        f"# comments do not count\n[privacy]\nclip_norm = 1.0\n"
        f"[apps]\nallow = ['sha256:{'CD' * 32}', 'sha256:{DIGEST}']\n"
    )
    assert first.policy_hash == second.policy_hash
    assert first.policy_hash.startswith("sha256:")
    assert len(first.policy_hash) == 7 + 64
    assert policy("").policy_hash != first.policy_hash
    assert policy("[egress]\nallow_query = true\n").policy_hash != policy("").policy_hash


def test_policy_hash_covers_publisher_keys_not_paths(tmp_path):
    generate_publisher_key(tmp_path / "a")
    generate_publisher_key(tmp_path / "b")
    one = policy("[apps]\ntrusted_publishers = ['a/publisher.pub']\n", base_dir=tmp_path)
    two = policy("[apps]\ntrusted_publishers = ['b/publisher.pub']\n", base_dir=tmp_path)
    again = policy(
        f"[apps]\ntrusted_publishers = ['{tmp_path / 'a' / 'publisher.pub'}']\n", base_dir=tmp_path
    )
    assert one.policy_hash != two.policy_hash
    assert one.policy_hash == again.policy_hash
