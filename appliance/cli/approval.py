"""``greenhouse pending``, ``approve`` and ``refuse``: the site administrator's decisions.

Run on the SuperNode host, against the SuperNode's data directory (see
:mod:`appliance.supernode.approvals`); the running SuperNode picks the decision up
within a second, records it in the site audit log and sends the signed receipt.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path

import click

from appliance.supernode.approvals import Approval, ApprovalBook
from dp import DPError
from dp.plan import DPPlan

#: ``--data-dir``: the SuperNode's data directory, for commands run on the site's host.
SITE_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("supernode-data"),
    show_default=True,
    help="The SuperNode's data directory.",
)


def _book(data_dir: Path) -> ApprovalBook:
    return ApprovalBook(data_dir, create=False)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _privacy_plan(run_config: dict[str, object]) -> str:
    """What the run's DP plan would cost this site, as the admission books it."""
    try:
        plan = DPPlan.from_run_config(run_config)
    except DPError as exc:
        return f"invalid: {exc} (the site will refuse the run)"
    if plan is None:
        return "none declared (the site's own [privacy] rules apply)"
    return f"{plan.mode.value}, {plan.rounds} rounds: {plan.site_spend()}"


def _describe(approval: Approval) -> dict[str, object]:
    run_config = json.loads(approval.run_config_json or "{}")
    return {
        "run_id": approval.run_id,
        "state": approval.state.value,
        "manifest_sha256": approval.manifest_sha256,
        "bundle_sha256": approval.bundle_sha256,
        "run_config": run_config,
        "privacy_plan": _privacy_plan(run_config),
        "policy_sha256": approval.policy_sha256,
        "requested_at": _when(approval.requested_at),
    }


@click.command(name="pending")
@SITE_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pending(data_dir: Path, as_json: bool) -> None:
    """List the runs waiting for this site's approval, with what each would run."""
    with _book(data_dir) as book:
        waiting = [_describe(a) for a in book.pending()]
    if as_json:
        click.echo(json.dumps(waiting, indent=2))
        return
    if not waiting:
        click.echo("no run is waiting for approval")
        return
    for entry in waiting:
        click.echo(f"run {entry['run_id']}  (asked {entry['requested_at']} UTC)")
        click.echo(f"  app bundle  sha256:{entry['bundle_sha256']}")
        click.echo(f"  run config  {json.dumps(entry['run_config'], sort_keys=True)}")
        click.echo(f"  DP plan     {entry['privacy_plan']}")
        click.echo(f"  manifest    sha256:{entry['manifest_sha256']}")
        click.echo(f"  approve:    greenhouse approve {entry['run_id']} --data-dir {data_dir}")


@click.command(name="approve")
@click.argument("run_id", type=int)
@SITE_DATA_DIR
@click.option(
    "--manifest",
    "manifest_sha256",
    default=None,
    help="Approve only if the run's manifest has this SHA-256 (as shown by `pending`).",
)
def approve(run_id: int, data_dir: Path, manifest_sha256: str | None) -> None:
    """Let a waiting run start at this site."""
    with _book(data_dir) as book:
        decided = book.decide(
            run_id,
            approve=True,
            by=getpass.getuser(),
            manifest_sha256=manifest_sha256.removeprefix("sha256:") if manifest_sha256 else None,
        )
    click.echo(
        f"run {run_id} approved by {decided.decided_by} (manifest {decided.manifest_sha256})"
    )


@click.command(name="refuse")
@click.argument("run_id", type=int)
@SITE_DATA_DIR
@click.option("--reason", required=True, help="Why (sent to the data scientist, signed).")
def refuse(run_id: int, data_dir: Path, reason: str) -> None:
    """Refuse a waiting run: it never starts at this site."""
    with _book(data_dir) as book:
        decided = book.decide(run_id, approve=False, by=getpass.getuser(), reason=reason)
    click.echo(f"run {run_id} refused by {decided.decided_by}: {decided.reason}")
