"""`greenhouse audit ...` through appliance.cli.main: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.cli import main
from audit import Witness


@pytest.fixture
def cli(capsys):
    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def site_db(federation) -> Path:
    federation.site.checkpoint()  # sign the tail, as a SuperNode does on shutdown
    return federation.directory / "site.db"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("greenhouse: error: ")
    return lines[0].removeprefix("greenhouse: error: ")


# --- show ---------------------------------------------------------------------------------


def test_show_table_and_filters(cli, site_db):
    code, out, _ = cli("audit", "show", "--file", site_db)
    rows = out.splitlines()
    assert code == 0 and rows[0].split()[:4] == ["SEQ", "TIME", "ACTOR", "ACTION"]
    assert len(rows) == 7 and "egress.reply" in rows[2] and "message_id=reply-1" in rows[2]
    code, out, _ = cli("audit", "show", "--file", site_db, "--action", "egress.reply", "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [x["seq"] for x in lines] == [1, 4]
    assert lines[0]["details"]["metric_keys"] == ["loss", "num-examples"]
    code, out, _ = cli("audit", "show", "--file", site_db, "--run", "run-9")
    assert code == 0 and out.splitlines()[-1] == "no matching entries"
    code, out, _ = cli("audit", "show", "--file", site_db, "--since", "2999-01-01")
    assert out.splitlines()[-1] == "no matching entries"


def test_show_from_an_export_and_usage_errors(cli, federation, monkeypatch, tmp_path):
    monkeypatch.setenv("GREENHOUSE_CONFIG_DIR", str(tmp_path / "no-config"))
    site_dir, _ = federation.export()
    code, out, _ = cli("audit", "show", "--file", site_dir, "--action", "checkpoint.seen")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, err = cli("audit", "show", "--app-dir", site_dir)  # no --file: the SuperLink
    assert code == 3 and "no federation configured" in err and not out
    code, _, err = cli("audit", "show", "--file", site_dir, "--since", "yesterday")
    assert code == 2 and "'yesterday' is not a date" in err
    code, _, err = cli("audit", "show", "--file", site_dir, "--action", "run.deleted")
    assert code == 2 and "'run.deleted' is not one of" in err


# --- export and verify --------------------------------------------------------------------


def test_export_then_verify(cli, site_db, federation, tmp_path):
    out_dir = tmp_path / "exp"
    code, out, _ = cli("audit", "export", "--file", site_db, "--out", out_dir)
    assert code == 0
    assert out.splitlines()[0] == "exported entries 0..5 (6), 2 tree heads, 0 cosignatures"
    assert f"wrote {out_dir / 'entries.jsonl'}" in out and f"wrote {out_dir / 'audit.vkey'}" in out
    vkey = federation.site_signer.verifier_key().encode()
    code, out, err = cli("audit", "verify", out_dir, "--key", vkey)
    assert (code, err) == (0, "")
    assert out.startswith("ok: entries 0..5 (6) in 1 export(s), 2 tree heads, latest size 6")
    assert "per tree head (distinct witnesses): 0 on 2" in out
    key_file = tmp_path / "site.vkey"
    key_file.write_text(vkey + "\n")
    code, out, _ = cli("audit", "verify", out_dir, "--key", key_file, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and [h["size"] for h in report["tree_heads"]] == [4, 6]
    code, _, err = cli("audit", "export", "--file", site_db, "--out", out_dir)
    assert code == 6 and "exists and is not empty" in one_error_line(err)


def test_verify_without_a_key_warns(cli, federation):
    site_dir, _ = federation.export()
    code, out, err = cli("audit", "verify", site_dir)
    assert code == 0 and out.startswith("ok: ")
    assert "warning: no key given, trusting" in err and "out of band" in err


def test_verify_counts_witness_cosignatures(cli, federation, witness):
    noon = datetime(2025, 6, 1, 12, tzinfo=UTC)
    state = Witness(signer=witness, log_key=federation.link.verifier_key, clock=lambda: noon)
    note = federation.link.checkpoint()
    cosigned = state.cosign(note)
    federation.link.add_cosignature(3, cosigned.signature, witness.verifier_key())
    _, link_dir = federation.export()
    args = ("audit", "verify", link_dir, "--key", federation.keys()["link_key"])
    code, out, _ = cli(*args)
    assert code == 0 and "1 signatures by keys not given were not checked" in out
    code, out, _ = cli(*args, "--witness-key", witness.verifier_key().encode())
    assert "(distinct witnesses): 1 on 1, 0 on 1" in out


def lines_of(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().splitlines()


def write_lines(d: Path, lines: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))


DAMAGE = {
    "edited": (
        lambda d: write_lines(
            d,
            [
                x.replace(b'"bytes":9', b'"bytes":8') if i == 1 else x
                for i, x in enumerate(lines_of(d))
            ],
        ),
        "edited: entry 1 was edited",
    ),
    "deleted": (
        lambda d: write_lines(d, [x for i, x in enumerate(lines_of(d)) if i != 2]),
        "deleted: entry 2 is missing",
    ),
    "reordered": (
        lambda d: write_lines(d, [lines_of(d)[i] for i in (0, 2, 1, 3, 4, 5)]),
        "reordered: line 1 holds entry 2; entry 1 is at line 2",
    ),
    "truncated": (
        lambda d: write_lines(d, lines_of(d)[:4]),
        "truncated: the export's entries end at 4",
    ),
    "forged": (
        lambda d: (d / "checkpoints" / f"{4:020d}.note").write_text(
            (d / "checkpoints" / f"{4:020d}.note").read_text().replace("\n4\n", "\n3\n")
        ),
        "forged tree head: checkpoints/00000000000000000004.note",
    ),
}


@pytest.mark.parametrize("case", DAMAGE.values(), ids=list(DAMAGE))
def test_verify_names_the_first_bad_entry(cli, federation, site_db, tmp_path, case):
    damage, message = case
    out_dir = tmp_path / "exp"
    assert cli("audit", "export", "--file", site_db, "--out", out_dir)[0] == 0
    damage(out_dir)
    code, out, err = cli("audit", "verify", out_dir, "--key", federation.keys()["site_key"])
    assert code == 6 and out == ""
    assert one_error_line(err).startswith(message)


def test_verify_bad_key_is_a_usage_error(cli, federation):
    site_dir, _ = federation.export()
    code, _, err = cli("audit", "verify", site_dir, "--key", "not-a-key")
    assert code == 2 and "verifier key is not name+<8 hex>+<base64>" in err


# --- reconcile ----------------------------------------------------------------------------


def test_reconcile(cli, federation):
    site_dir, link_dir = federation.export()
    code, out, err = cli("audit", "reconcile", site_dir, link_dir, *_key_args(federation))
    assert (code, err) == (0, "")
    assert "replies: 2 sent by the site, 2 received by the SuperLink, 2 matched" in out
    assert out.splitlines()[-1] == "ok: the logs agree"
    federation.reply("run-1", "reply-3", "task-3", b"w3", on_link=False)
    site_dir, link_dir = federation.export("b")
    code, out, err = cli("audit", "reconcile", site_dir, link_dir, *_key_args(federation))
    assert code == 6
    assert "reply missing on the SuperLink: the site sent reply reply-3" in out
    assert one_error_line(err).startswith(
        "reply missing on the SuperLink: the site sent reply reply-3 (site entry 6"
    )
    code, out, _ = cli("audit", "reconcile", site_dir, link_dir, *_key_args(federation), "--json")
    report = json.loads(out)
    assert code == 6 and report["findings"][0]["message_id"] == "reply-3"


def _key_args(federation) -> list[str]:
    keys = federation.keys()
    return ["--site-key", keys["site_key"], "--link-key", keys["link_key"]]


# --- archive ------------------------------------------------------------------------------


def signing_key_file(path: Path, key: Ed25519PrivateKey, mode: int = 0o600) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    os.chmod(path, mode)
    return path


def test_archive_then_verify_the_chain(cli, federation, tmp_path):
    federation.link.close()
    db = federation.directory / "link.db"
    key = signing_key_file(tmp_path / "audit.key", federation.link_signer.private_key)
    args = ("audit", "archive", "--file", db, "--out", tmp_path / "arch", "--signing-key", key)
    code, out, err = cli(*args, "--before", "2999-01-01T00:00:00+00:00")
    assert (code, err) == (0, "")
    assert out.startswith("archived entries 0..2 (3), sealed at tree size 3 root ")
    assert "recorded as entry 3 (audit.archived); the log now starts at entry 3" in out
    assert cli("audit", "export", "--file", db, "--out", tmp_path / "live")[0] == 0
    vkey = federation.keys()["link_key"]
    code, out, _ = cli("audit", "verify", tmp_path / "arch", tmp_path / "live", "--key", vkey)
    assert code == 0 and out.startswith("ok: entries 0..3 (4) in 2 export(s)")
    code, _, err = cli("audit", "verify", tmp_path / "live", tmp_path / "arch", "--key", vkey)
    assert code == 6 and "live is not a sealed archive" in one_error_line(err)
    code, _, err = cli(
        *args[:-4], "--out", tmp_path / "again", "--signing-key", key, "--before", "2000-01-01"
    )
    assert code == 6 and one_error_line(err).startswith("nothing to archive")


def test_archive_refuses_the_wrong_key_and_a_readable_key(cli, federation, tmp_path):
    db = federation.directory / "link.db"
    wrong = signing_key_file(tmp_path / "wrong.key", Ed25519PrivateKey.generate())
    base = ("audit", "archive", "--file", db, "--out", tmp_path / "a", "--before", "2999-01-01")
    code, _, err = cli(*base, "--signing-key", wrong)
    assert code == 6 and "not the log's signing key" in one_error_line(err)
    loose = signing_key_file(tmp_path / "loose.key", federation.link_signer.private_key, 0o644)
    code, _, err = cli(*base, "--signing-key", loose)
    assert code == 4 and "accessible by group or others" in one_error_line(err)
    assert not (tmp_path / "a").exists()
