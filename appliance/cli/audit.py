"""``greenhouse audit``: show, export, verify, reconcile and archive audit logs.

Each command parses its arguments, calls one :mod:`audit` function and renders
the result (a table or summary; ``--json`` for scripts). Failures are
:class:`audit.AuditError` s, which :func:`appliance.cli.main` prints as one line
(exit 6). ``verify`` and ``reconcile`` work offline on export directories;
``show`` reads a local database or export (``--file``), or the SuperLink's
log over the Control API (auditor role).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

import audit
from appliance.federation import ControlClient, Federation, load_federation
from certs import load_signing_key

__all__ = ["audit_group"]

_DIR = click.Path(file_okay=False, exists=True, path_type=Path)
_OUT = click.Path(file_okay=False, path_type=Path)
_DB = click.Path(dir_okay=False, exists=True, path_type=Path)
_ACTIONS = click.Choice(sorted(a.value for a in audit.Action))


class _When(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A date (``2025-01-31``) or ISO 8601 time; without a zone, UTC."""

    name = "date"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            when = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a date like 2025-01-31 or 2025-01-31T12:00:00Z", param, ctx
            )
        return when if when.tzinfo else when.replace(tzinfo=UTC)


class VKeyParam(click.ParamType):  # type: ignore[type-arg]
    """A verifier key ``name+hash+base64``, or a file holding one on its first line."""

    name = "vkey"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> audit.VerifierKey:
        if isinstance(value, audit.VerifierKey):
            return value
        text = str(value)
        path = Path(text)
        if path.is_file():
            text = (path.read_text(encoding="utf-8").splitlines() or [""])[0]
        try:
            return audit.parse_verifier_key(text)
        except audit.MalformedNote as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


def _key_or_export_copy(key: audit.VerifierKey | None, directory: Path) -> audit.VerifierKey:
    """The key given, else the export's own copy - with a warning: it proves nothing."""
    if key is not None:
        return key
    copy = VKeyParam().convert(str(directory / "audit.vkey"), None, None)
    click.echo(
        f"warning: no key given, trusting {directory / 'audit.vkey'} from the export itself; "
        "get the log's key out of band",
        err=True,
    )
    return copy


@dataclass(frozen=True)
class _ControlSource:
    """The SuperLink's log over the Control API (auditor role); filters run there."""

    federation: Federation

    def entries(self, query: audit.EntryQuery) -> Iterator[audit.Entry]:
        with ControlClient(self.federation) as client:
            lines = client.audit_lines(
                run_id=query.run_id or "",
                actions=sorted(a.value for a in query.actions),
                since=query.since.isoformat() if query.since else "",
            )
            for line in lines:
                yield audit.parse_entry(line.encode("utf-8"))


def _source(file: Path | None, federation: str | None, app_dir: Path) -> audit.EntrySource:
    """Where ``show`` reads from: a local database or export, else the SuperLink."""
    if file is not None:
        return audit.open_source(file)
    return _ControlSource(load_federation(federation, app_dir))


def _short(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _row(entry: audit.Entry) -> str:
    actor = "system" if entry.actor.is_system else f"{entry.actor.identity} ({entry.actor.role})"
    subjects = " ".join(f"{k}={v}" for k, v in entry.subjects.items()) or "-"
    details = audit.canonical_json(entry.to_json()["details"]).decode()
    when = str(entry.to_json()["time"])[:19].replace("T", " ")
    return (
        f"{entry.seq:>6} {when}Z {_short(actor, 28):<28} {entry.action.value:<18}"
        f" {_short(subjects, 36):<36} {_short(details, 60)}"
    )


@click.group("audit")
def audit_group() -> None:
    """Show, export, verify, reconcile and archive tamper-evident audit logs."""


@audit_group.command()
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, path_type=Path),
    help="A local database or export (default: the SuperLink, over the Control API).",
)
@click.option("--federation", help="Federation name (default: the only/default one).")
@click.option(
    "--app",
    "--app-dir",
    "app_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="App dir whose pyproject names federations.",
)
@click.option("--run", "run_id", help="Only entries about this run (subjects.run_id).")
@click.option("--action", "actions", multiple=True, type=_ACTIONS, help="Only this action.")
@click.option("--since", type=_When(), help="Only entries at or after this time.")
@click.option("--json", "as_json", is_flag=True, help="One entry line per line.")
def show(
    file: Path | None,
    federation: str | None,
    app_dir: Path,
    run_id: str | None,
    actions: tuple[str, ...],
    since: datetime | None,
    as_json: bool,
) -> None:
    """List audit entries as a table (a view: it verifies nothing, see `verify`)."""
    chosen = frozenset(audit.Action(a) for a in actions)
    query = audit.EntryQuery(run_id=run_id, actions=chosen, since=since)
    source = _source(file, federation, app_dir)
    shown = 0
    if not as_json:
        click.echo(f"{'SEQ':>6} {'TIME':<20} {'ACTOR':<28} {'ACTION':<18} {'SUBJECTS':<36} DETAILS")
    for entry in source.entries(query):
        shown += 1
        click.echo(audit.encode_entry(entry).decode() if as_json else _row(entry))
    if not as_json and not shown:
        click.echo("no matching entries")


@audit_group.command()
@click.option("--file", "file", required=True, type=_DB, help="The local database.")
@click.option("--out", required=True, type=_OUT, help="A new or empty directory.")
def export(file: Path, out: Path) -> None:
    """Write an offline-verifiable export of the audit log in --file."""
    summary = audit.export(audit.open_sqlite(file), out)
    click.echo(
        f"exported entries {summary.start}..{summary.start + summary.entries - 1} "
        f"({summary.entries}), {summary.checkpoints} tree heads, "
        f"{summary.cosignatures} cosignatures"
    )
    for path in summary.files:
        if path.parent.name != "checkpoints":
            click.echo(f"wrote {path}")
    click.echo(f"wrote {out / 'checkpoints'}/ ({summary.checkpoints} files)")


def _heads(report: audit.ChainReport) -> list[audit.CheckpointReport]:
    """Tree heads by size (a seal is in both exports it joins)."""
    unique = {c.tree_size: c for s in report.segments for c in s.checkpoints}
    return [unique[size] for size in sorted(unique)]


def _verify_json(report: audit.ChainReport) -> str:
    return json.dumps(
        {
            "ok": report.ok,
            "problem": None if report.problem is None else report.problem.to_error().args[0],
            "start": report.start,
            "end": report.end,
            "entries": report.entries,
            "tree_heads": [
                {
                    "size": c.tree_size,
                    "root": c.root_hash.hex(),
                    "witnesses": sorted(c.witnesses),
                    "unknown_signatures": c.unknown_signatures,
                }
                for c in _heads(report)
            ],
        },
        sort_keys=True,
    )


@audit_group.command()
@click.argument("directories", nargs=-1, required=True, type=_DIR)
@click.option("--key", type=VKeyParam(), help="The log's verifier key (or a file holding it).")
@click.option("--witness-key", "witness_keys", multiple=True, type=VKeyParam(), help="Repeatable.")
@click.option("--allow-unsigned-tail", is_flag=True, help="Accept entries after the last head.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def verify(
    directories: tuple[Path, ...],
    key: audit.VerifierKey | None,
    witness_keys: tuple[audit.VerifierKey, ...],
    allow_unsigned_tail: bool,
    as_json: bool,
) -> None:
    """Verify export DIRECTORIES offline (archives oldest first, then the live export)."""
    report = audit.check_chain(
        directories,
        _key_or_export_copy(key, directories[-1]),
        witness_keys=witness_keys,
        allow_unsigned_tail=allow_unsigned_tail,
    )
    if as_json:
        click.echo(_verify_json(report))
    if report.problem is not None:
        raise report.problem.to_error()
    if as_json:
        return
    heads = _heads(report)
    latest = heads[-1] if heads else None
    click.echo(
        f"ok: entries {report.start}..{report.end - 1} ({report.entries}) in "
        f"{len(report.segments)} export(s), {len(heads)} tree heads"
        + (f", latest size {latest.tree_size} root {latest.root_hash.hex()}" if latest else "")
    )
    by_count = Counter(c.cosignatures for c in heads)
    spread = ", ".join(f"{n} on {by_count[n]}" for n in sorted(by_count, reverse=True))
    click.echo(f"witness cosignatures per tree head (distinct witnesses): {spread or 'none'}")
    unknown = sum(c.unknown_signatures for c in heads)
    if unknown:
        click.echo(f"{unknown} signatures by keys not given were not checked (--witness-key)")


@audit_group.command()
@click.argument("site_export", type=_DIR)
@click.argument("link_exports", nargs=-1, required=True, type=_DIR)
@click.option("--site-key", type=VKeyParam(), help="The site log's verifier key.")
@click.option("--link-key", type=VKeyParam(), help="The SuperLink log's verifier key.")
@click.option("--node", help="The site's node id (default: from the site log).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def reconcile(
    site_export: Path,
    link_exports: tuple[Path, ...],
    site_key: audit.VerifierKey | None,
    link_key: audit.VerifierKey | None,
    node: str | None,
    as_json: bool,
) -> None:
    """Cross-check a site's export against the SuperLink's (archives first, then live)."""
    report = audit.reconcile(
        site_export,
        list(link_exports),
        site_key=_key_or_export_copy(site_key, site_export),
        link_key=_key_or_export_copy(link_key, link_exports[-1]),
        node=node,
    )
    if as_json:
        fields = {k: getattr(report, k) for k in report.__dataclass_fields__ if k != "findings"}
        fields["findings"] = [
            {"kind": f.kind.value, "message": f.message, "message_id": f.message_id}
            for f in report.findings
        ]
        click.echo(json.dumps(fields, sort_keys=True, default=list))
    else:
        click.echo(f"site node(s): {', '.join(report.nodes) or '-'}")
        click.echo(
            f"replies: {report.replies_sent} sent by the site, {report.replies_received} "
            f"received by the SuperLink, {report.replies_matched} matched, "
            f"{report.replies_unchecked} outside both exports"
        )
        click.echo(
            f"SuperLink tree heads stored by the site: {report.tree_heads_seen}, "
            f"{report.tree_heads_consistent} consistent, {report.tree_heads_unchecked} archived"
        )
        for finding in report.findings:
            click.echo(finding.line())
    if not report.ok:
        raise report.to_error()
    if not as_json:
        click.echo("ok: the logs agree")


@audit_group.command()
@click.option("--file", "file", required=True, type=_DB, help="The local database.")
@click.option("--before", required=True, type=_When(), help="Archive entries older than this.")
@click.option("--out", required=True, type=_OUT, help="A new or empty directory.")
@click.option(
    "--signing-key",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The log's Ed25519 signing key (PEM, mode 0600).",
)
def archive(file: Path, before: datetime, out: Path, signing_key: Path) -> None:
    """Move entries older than --before into a sealed, verified archive in --out."""
    engine = audit.open_sqlite(file, read_only=False)
    key = load_signing_key(signing_key)
    with audit.AuditLog.reopen(engine, key, clock=lambda: datetime.now(UTC)) as log:
        summary = audit.archive(log, before=before, out_dir=out)
    click.echo(
        f"archived entries {summary.start}..{summary.end - 1} ({summary.entries}), sealed at "
        f"tree size {summary.end} root {summary.root_hash.hex()}"
    )
    click.echo(
        f"recorded as entry {summary.entry.seq} (audit.archived); the log now starts at "
        f"entry {summary.end}; keep {out} with the later exports"
    )
    for path in summary.files:
        if path.parent.name != "checkpoints":
            click.echo(f"wrote {path}")
    click.echo(f"wrote {out / 'checkpoints'}/ ({summary.checkpoints} files)")
