"""Reconciliation of a site's log with the SuperLink's (the honest cases and the API).

The named attacks (missing replies, forks, roll-backs) are in
tests/attacks/audit/test_reconcile_attacks.py.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta

import pytest

from audit import (
    AuditUsageError,
    ExportFailed,
    FindingKind,
    ReconcileFailed,
    ReconcileReport,
    archive,
    export,
    reconcile,
)
from audit.schema import iter_lines


def test_agreeing_logs(federation):
    site_dir, link_dir = federation.export()
    report = reconcile(site_dir, link_dir, **federation.keys())
    assert report.ok, report.findings
    assert report.nodes == ("hospital-a",)
    assert (report.replies_sent, report.replies_received, report.replies_matched) == (2, 2, 2)
    assert (report.tree_heads_seen, report.tree_heads_consistent) == (2, 2)
    assert report.site_entries == 6 and report.link_entries == 3
    with pytest.raises(AuditUsageError, match="the logs agree"):
        report.to_error()


def test_keys_as_objects_and_explicit_node(federation):
    site_dir, link_dir = federation.export()
    report = reconcile(
        site_dir,
        [link_dir],
        site_key=federation.site_signer.verifier_key(),
        link_key=federation.link_signer.verifier_key(),
        node="hospital-b",
    )
    # as hospital-b, the site's two replies are missing and hospital-b's is unexplained
    kinds = [f.kind for f in report.findings]
    assert kinds == [FindingKind.MISSING_ON_LINK] * 2 + [FindingKind.MISSING_ON_SITE]
    error = report.to_error()
    assert isinstance(error, ReconcileFailed)
    assert str(error).startswith("reply missing on the SuperLink: the site sent reply reply-1")
    assert str(error).endswith("(and 2 more)")


def test_a_log_that_does_not_verify_is_the_only_finding(federation):
    site_dir, link_dir = federation.export()
    swapped = reconcile(
        site_dir,
        link_dir,
        site_key=federation.keys()["link_key"],
        link_key=federation.keys()["link_key"],
    )
    assert [f.kind for f in swapped.findings] == [FindingKind.SITE_LOG_INVALID]
    assert "forged tree head" in swapped.findings[0].message
    (link_dir / "entries.jsonl").write_bytes(b"")
    broken = reconcile(site_dir, link_dir, **federation.keys())
    assert [f.kind for f in broken.findings] == [FindingKind.LINK_LOG_INVALID]
    assert "truncated" in broken.findings[0].message


def test_site_without_node_id(tmp_path, clock, federation):
    # A second, independent federation of the same kind (no conftest import: the
    # module name "conftest" is ambiguous across test directories).
    (tmp_path / "second").mkdir()
    fed = type(federation)(tmp_path / "second", clock)
    fed.pull()
    fed.reply("run-1", "reply-1", "task-1", b"w", on_site=False)
    site_dir, link_dir = fed.export()
    with pytest.raises(AuditUsageError, match="names no node id"):
        reconcile(site_dir, link_dir, **fed.keys())
    assert not reconcile(site_dir, link_dir, node="hospital-a", **fed.keys()).ok


def test_archived_superlink_prefix_is_unchecked_not_missing(federation, tmp_path):
    link = federation.link
    with link.engine.connect() as conn:
        third = json.loads(list(iter_lines(conn))[2])
    before = datetime.fromisoformat(third["time"]) + timedelta(microseconds=1)
    archive(link, before=before, out_dir=tmp_path / "link-archive")  # entries 0..2
    site_dir, _ = federation.export("a")
    export(link, tmp_path / "link-live")
    alone = reconcile(site_dir, tmp_path / "link-live", **federation.keys())
    assert alone.ok, alone.findings
    assert alone.replies_unchecked == 2 and alone.tree_heads_unchecked == 1
    chained = reconcile(
        site_dir, [tmp_path / "link-archive", tmp_path / "link-live"], **federation.keys()
    )
    assert chained.ok and chained.replies_matched == 2 and chained.tree_heads_consistent == 2


def test_archived_site_prefix_is_unchecked_not_missing(federation, tmp_path):
    site = federation.site
    with site.engine.connect() as conn:
        fourth = json.loads(list(iter_lines(conn))[3])
    archive(site, before=datetime.fromisoformat(fourth["time"]), out_dir=tmp_path / "site-archive")
    export(site, tmp_path / "site-live")  # starts at entry 3: reply-1 is in the archive
    _, link_dir = federation.export("b")
    report = reconcile(tmp_path / "site-live", link_dir, **federation.keys())
    assert report.ok, report.findings
    assert (report.replies_matched, report.replies_unchecked) == (1, 1)


def test_unreadable_export(federation, tmp_path):
    site_dir, link_dir = federation.export()
    copy = tmp_path / "copy"
    shutil.copytree(site_dir, copy)
    (copy / "entries.jsonl").unlink()
    with pytest.raises(ExportFailed, match=r"cannot read entries\.jsonl"):
        reconcile(copy, link_dir, **federation.keys())


def test_report_defaults():
    assert ReconcileReport().ok
