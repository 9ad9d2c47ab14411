"""``greenhouse app`` and ``greenhouse policy`` through ``appliance.cli.main``."""

from __future__ import annotations

import json
import stat

import pytest
from policy_harness import make_app, write_policy

from appliance.bundle import build_bundle
from appliance.cli import main
from appliance.supernode.policy import admit_bundle, load_policy


@pytest.fixture
def run(capsys):
    def invoke(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("greenhouse: error: ")
    return lines[0]


def test_app_hash_prints_the_bundle_digest(run, tmp_path):
    app = make_app(tmp_path)
    code, out, _ = run("app", "hash", app)
    assert code == 0
    assert out == f"sha256:{build_bundle(app).sha256}\n"


def test_app_hash_of_a_non_app_directory_fails(run, tmp_path):
    code, _, err = run("app", "hash", tmp_path)
    assert code == 1
    assert "no pyproject.toml" in _error_line(err)


def test_keygen_sign_verify_and_admit(run, tmp_path):
    app = make_app(tmp_path)
    code, out, _ = run("app", "keygen", "--out", tmp_path / "keys")
    assert code == 0
    key, pub = tmp_path / "keys" / "publisher.key", tmp_path / "keys" / "publisher.pub"
    assert out.splitlines()[:2] == [f"wrote {key}", f"wrote {pub}"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    signature = tmp_path / "app.sig"
    code, out, _ = run("app", "sign", app, "--key", key, "--out", signature)
    assert code == 0
    assert f"wrote {signature}" in out

    code, out, _ = run("app", "verify", app, "--signature", signature, "--publisher", pub)
    assert code == 0
    assert "signed by publisher" in out

    site = load_policy(
        write_policy(tmp_path, "[apps]\ntrusted_publishers = ['keys/publisher.pub']\n")
    )
    digest = build_bundle(app).sha256
    assert admit_bundle(site, digest, signature=signature.read_bytes()).publisher is not None


def test_verify_refuses_a_tampered_app(run, tmp_path):
    app = make_app(tmp_path)
    run("app", "keygen", "--out", tmp_path / "keys")
    signature = tmp_path / "app.sig"
    run("app", "sign", app, "--key", tmp_path / "keys" / "publisher.key", "--out", signature)
    (app / "pkg" / "__init__.py").write_text("x = 2\n")
    pub = tmp_path / "keys" / "publisher.pub"
    code, _, err = run("app", "verify", app, "--signature", signature, "--publisher", pub)
    assert code == 1
    assert "signature is for bundle" in _error_line(err)


def test_keygen_refuses_to_overwrite(run, tmp_path):
    assert run("app", "keygen", "--out", tmp_path)[0] == 0
    code, _, err = run("app", "keygen", "--out", tmp_path)
    assert code == 4
    assert "already exists" in _error_line(err)


def test_sign_refuses_a_group_readable_key(run, tmp_path):
    app = make_app(tmp_path)
    run("app", "keygen", "--out", tmp_path / "keys")
    key = tmp_path / "keys" / "publisher.key"
    key.chmod(0o644)
    code, _, err = run("app", "sign", app, "--key", key, "--out", tmp_path / "x.sig")
    assert code == 4
    assert "chmod 600" in _error_line(err)


EXAMPLE = """
[apps]
allow = ["sha256:{digest}"]
[privacy]
require_secure_aggregation = true
[egress]
allowed_metric_keys = ["num-examples", "loss"]
"""


def test_policy_check_prints_the_hash_and_a_summary(run, tmp_path):
    path = write_policy(tmp_path, EXAMPLE.format(digest="ab" * 32))
    code, out, _ = run("policy", "check", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{path}: valid"
    assert lines[1] == f"policy hash: {load_policy(path).policy_hash}"
    assert "SecAgg+ required (min cohort 3)" in out
    assert "metric keys: loss, num-examples" in out
    assert "network none" in out


def test_policy_check_json(run, tmp_path):
    path = write_policy(tmp_path, "")
    code, out, _ = run("policy", "check", "--json", path)
    assert code == 0
    body = json.loads(out)
    assert body["valid"] is True
    assert body["policy_hash"] == load_policy(path).policy_hash
    assert body["apps"] == "none allowed: every bundle will be refused"


def test_policy_check_of_a_bad_file_is_one_line_and_exit_7(run, tmp_path):
    path = write_policy(tmp_path, "[egress]\nmax_reply_bytes = 'big'\n")
    code, _, err = run("policy", "check", path)
    assert code == 7
    assert _error_line(err) == (
        "greenhouse: error: site.toml: [egress] max_reply_bytes must be a positive integer, "
        "got 'big'"
    )


def test_policy_check_of_a_missing_file_is_a_usage_error(run, tmp_path):
    code, _, err = run("policy", "check", tmp_path / "absent.toml")
    assert code == 2
    assert "does not exist" in err


def test_shipped_example_policy_is_valid(run):
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "deploy" / "site.example.toml"
    code, out, err = run("policy", "check", example)
    assert code == 0, err
    assert "valid" in out.splitlines()[0]
