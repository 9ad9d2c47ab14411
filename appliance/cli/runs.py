"""``greenhouse ls``, ``show``, ``log``, ``pull`` and ``stop``: a data scientist's (or
auditor's) view of runs."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from appliance.errors import ApplianceError
from appliance.federation import ControlClient, load_federation
from appliance.proto import control_pb2 as pb
from appliance.receipts import RunManifest
from appliance.strategy.checkpoint import METRICS, check_artifact_name

_FEDERATION = click.option("--federation", help="Federation name (default: the only/default one).")
_APP = click.option(
    "--app",
    "app_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="App dir whose pyproject names federations.",
)


class RunFailed(ApplianceError):
    """A run the CLI followed ended failed or stopped."""


def _when(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _client(federation: str | None, app_dir: Path) -> ControlClient:
    return ControlClient(load_federation(federation, app_dir))


def follow_run(client: ControlClient, run_id: int) -> None:
    """Print the run's log until it ends; raise RunFailed unless it finished."""
    for line in client.logs(run_id, follow=True):
        prefix = "" if line.stream == "stdout" else f"[{line.stream}] "
        click.echo(f"{prefix}{line.text}")
    (info,) = client.runs(run_id)
    if info.status != "finished":
        raise RunFailed(f"run {run_id} {info.status}: {info.reason}")
    click.echo(f"run {run_id} finished")


def _latest_decisions(info: pb.RunInfo) -> dict[str, pb.ReceiptInfo]:
    """Each site's latest receipt about the run (receipts arrive oldest first)."""
    return {receipt.node: receipt for receipt in info.receipts}


def _note(info: pb.RunInfo) -> str:
    """The reason column: the run's reason, or which sites it waits for."""
    waiting = sorted(node for node, r in _latest_decisions(info).items() if r.decision == "pending")
    if waiting and info.status in ("pending", "starting", "running"):
        return f"waiting for approval from {', '.join(waiting)}"
    return info.reason


def _receipt_row(receipt: pb.ReceiptInfo) -> dict[str, object]:
    return {
        "node": receipt.node,
        "decision": receipt.decision,
        "manifest_sha256": receipt.manifest_sha256,
        "policy_sha256": receipt.policy_sha256,
        "reason": receipt.reason,
        "decided_by": receipt.decided_by,
        "signed_at": _when(receipt.signed_at),
        "receipt": receipt.receipt.decode("utf-8", "replace"),
        "signature": receipt.signature.hex(),
    }


def _privacy(info: pb.RunInfo) -> str:
    """``ε 1.2/7.9 site-level`` (spent of planned), or ``-`` without a DP plan."""
    if not info.HasField("privacy"):
        return "-"
    p = info.privacy
    return f"ε {p.spent_epsilon:.3g}/{p.planned_epsilon:.3g} {p.unit}"


def _row(info: pb.RunInfo) -> dict[str, object]:
    return {
        "run_id": info.run_id,
        "owner": info.owner,
        "status": info.status,
        "reason": _note(info),
        "bundle_sha256": info.bundle_sha256,
        "created_at": _when(info.created_at),
        "finished_at": _when(info.finished_at),
        "receipts": [_receipt_row(r) for r in info.receipts],
        "privacy": _privacy_row(info),
    }


def _privacy_row(info: pb.RunInfo) -> dict[str, object] | None:
    if not info.HasField("privacy"):
        return None
    p = info.privacy
    return {
        "unit": p.unit,
        "delta": p.delta,
        "planned_epsilon": p.planned_epsilon,
        "spent_epsilon": p.spent_epsilon,
        "rounds_done": p.rounds_done,
        "plan": json.loads(p.plan_json or "{}"),
    }


@click.command(name="ls")
@_FEDERATION
@_APP
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(federation: str | None, app_dir: Path, as_json: bool) -> None:
    """List the runs you may see."""
    with _client(federation, app_dir) as client:
        infos = client.runs()
    rows = [_row(info) for info in infos]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'run id':>20}  {'status':<9} {'owner':<16} {'created':<19}  {'privacy':<28}"
    click.echo(f"{header}  reason")
    for info, row in zip(infos, rows, strict=True):
        click.echo(
            f"{row['run_id']:>20}  {row['status']:<9} {row['owner']:<16} {row['created_at']:<19}  "
            f"{_privacy(info):<28}  {row['reason']}"
        )


@click.command(name="show")
@click.argument("run_id", type=int)
@_FEDERATION
@_APP
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: int, federation: str | None, app_dir: Path, as_json: bool) -> None:
    """Show one run: its manifest and every site's signed receipt (accept, refuse, pending)."""
    with _client(federation, app_dir) as client:
        (info,) = client.runs(run_id)
    row = _row(info)
    if as_json:
        row["run_config"] = json.loads(info.run_config_json or "{}")
        click.echo(json.dumps(row, indent=2))
        return
    manifest = RunManifest(
        run_id=info.run_id, bundle_sha256=info.bundle_sha256, run_config_json=info.run_config_json
    )
    click.echo(f"run {info.run_id}  {info.status}  owner {info.owner}")
    if row["reason"]:
        click.echo(f"  {row['reason']}")
    click.echo(f"  created {row['created_at']}, finished {row['finished_at']}")
    click.echo(f"  app bundle  sha256:{info.bundle_sha256}")
    click.echo(f"  run config  {info.run_config_json}")
    click.echo(f"  manifest    sha256:{manifest.sha256}")
    if info.HasField("privacy"):
        p = info.privacy
        click.echo(
            f"  privacy     ε = {p.spent_epsilon:.4g} spent of {p.planned_epsilon:.4g} planned "
            f"after {p.rounds_done} rounds (δ = {p.delta:g}, {p.unit}); plan {p.plan_json}"
        )
    if not info.receipts:
        click.echo("receipts: none yet")
        return
    click.echo("receipts (signed by each site's node key, verified by the SuperLink):")
    click.echo(f"  {'site':<16} {'decision':<9} {'signed (UTC)':<19}  {'policy':<16}  reason")
    for receipt in info.receipts:
        by = f" [{receipt.decided_by}]" if receipt.decided_by else ""
        stale = "" if receipt.manifest_sha256 == manifest.sha256 else " (OTHER MANIFEST)"
        click.echo(
            f"  {receipt.node:<16} {receipt.decision:<9} {_when(receipt.signed_at):<19}  "
            f"{(receipt.policy_sha256 or '-')[:16]:<16}  {receipt.reason}{by}{stale}"
        )


def _metrics_document(client: ControlClient, run_id: int) -> dict[str, Any] | None:
    names = {a.name for a in client.artifacts(run_id)}
    if METRICS not in names:
        return None
    document = json.loads(client.artifact(run_id, METRICS))
    return document if isinstance(document, dict) else None


def _compact(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())
    )


def _metrics_table(document: dict[str, Any]) -> None:
    click.echo(f"per-round metrics ({document.get('strategy', '?')}):")
    click.echo(f"{'round':>5}  {'failed':>6}  train | evaluate (sites) | evaluate (server)")
    for entry in document.get("rounds", []):
        failed = len(entry.get("train_failures") or []) + len(entry.get("evaluate_failures") or [])
        click.echo(
            f"{entry['round']:>5}  {failed:>6}  {_compact(entry.get('train'))} | "
            f"{_compact(entry.get('evaluate'))} | {_compact(entry.get('evaluate_serverapp'))}"
        )


@click.command(name="log")
@click.argument("run_id", type=int)
@_FEDERATION
@_APP
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-round metrics as JSON.")
def log(run_id: int, federation: str | None, app_dir: Path, follow: bool, as_json: bool) -> None:
    """Print a run's log (ServerApp output and system events), then its per-round metrics."""
    with _client(federation, app_dir) as client:
        if as_json:
            click.echo(json.dumps(_metrics_document(client, run_id), indent=2))
            return
        for line in client.logs(run_id, follow=follow):
            prefix = "" if line.stream == "stdout" else f"[{line.stream}] "
            click.echo(f"{prefix}{line.text}")
        document = _metrics_document(client, run_id)
    if document is not None:
        _metrics_table(document)


@click.command(name="pull")
@click.argument("run_id", type=int)
@_FEDERATION
@_APP
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write into (default: ./run-RUN_ID).",
)
def pull(run_id: int, federation: str | None, app_dir: Path, out: Path | None) -> None:
    """Download a run's artifacts: checkpoints, final model (.npz) and metrics.json."""
    target = out or Path(f"run-{run_id}")
    with _client(federation, app_dir) as client:
        artifacts = client.artifacts(run_id)
        if not artifacts:
            raise RunFailed(f"run {run_id} saved no artifacts")
        for info in artifacts:
            path = target.joinpath(*check_artifact_name(info.name).split("/"))
            data = client.artifact(run_id, info.name)
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise RunFailed(f"artifact {info.name} arrived corrupted (SHA-256 mismatch)")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            click.echo(f"wrote {path}")


@click.command(name="stop")
@click.argument("run_id", type=int)
@_FEDERATION
@_APP
def stop(run_id: int, federation: str | None, app_dir: Path) -> None:
    """Stop a run you submitted."""
    with _client(federation, app_dir) as client:
        status = client.stop(run_id)
    click.echo(f"run {run_id} {status}")
