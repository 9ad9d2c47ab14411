"""``greenhouse ls``, ``log`` and ``stop``: a data scientist's (or auditor's) view of runs."""

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


def _row(info: pb.RunInfo) -> dict[str, object]:
    return {
        "run_id": info.run_id,
        "owner": info.owner,
        "status": info.status,
        "reason": info.reason,
        "bundle_sha256": info.bundle_sha256,
        "created_at": _when(info.created_at),
        "finished_at": _when(info.finished_at),
    }


@click.command(name="ls")
@_FEDERATION
@_APP
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(federation: str | None, app_dir: Path, as_json: bool) -> None:
    """List the runs you may see."""
    with _client(federation, app_dir) as client:
        rows = [_row(info) for info in client.runs()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'run id':>20}  {'status':<9} {'owner':<16} {'created':<19}  reason")
    for row in rows:
        click.echo(
            f"{row['run_id']:>20}  {row['status']:<9} {row['owner']:<16} {row['created_at']:<19}  "
            f"{row['reason']}"
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
