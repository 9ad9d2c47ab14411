"""``greenhouse budget show``: a site's privacy-budget ledger, for its administrator.

Run on the SuperNode host against its data directory (``budget.db``, see
:mod:`appliance.supernode.budget`). Site-level and record-level budgets are shown
apart: their epsilons protect different things and are never added.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.approval import SITE_DATA_DIR
from appliance.errors import ApplianceError
from appliance.supernode.budget import BUDGET_FILE, SiteBudget


class NoLedger(ApplianceError):
    """The data directory holds no privacy-budget ledger."""


@click.group(name="budget")
def budget() -> None:
    """The site's privacy-budget ledger."""


@budget.command(name="show")
@SITE_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(data_dir: Path, as_json: bool) -> None:
    """Caps, spent, reserved and remaining epsilon per dataset and privacy unit."""
    path = data_dir / BUDGET_FILE
    if not path.is_file():
        raise NoLedger(f"no privacy ledger at {path}: is --data-dir the SuperNode's data dir?")
    site = SiteBudget(data_dir)
    try:
        statuses = site.status()
    finally:
        site.close_ledger()
    rows = [
        {
            "dataset": s.budget.dataset,
            "unit": s.budget.unit.value,
            "max_epsilon_per_run": s.budget.max_epsilon_per_run,
            "max_epsilon_total": s.budget.max_epsilon_total,
            "spent_epsilon": s.spent.epsilon,
            "spent_delta": s.spent.delta,
            "reserved_epsilon": s.reserved_epsilon,
            "remaining_epsilon": s.remaining_epsilon,
            "runs": s.runs,
            "open_runs": s.open_runs,
        }
        for s in statuses
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no budget set: the site policy has no epsilon caps")
        return
    click.echo(
        f"{'dataset':<16} {'unit':<13} {'spent':>8} {'reserved':>9} {'remaining':>9} "
        f"{'per run':>8} {'total':>8}  runs (open)"
    )
    for row in rows:
        click.echo(
            f"{row['dataset']:<16} {row['unit']:<13} {row['spent_epsilon']:>8.4g} "
            f"{row['reserved_epsilon']:>9.4g} {row['remaining_epsilon']:>9.4g} "
            f"{row['max_epsilon_per_run']:>8.4g} {row['max_epsilon_total']:>8.4g}  "
            f"{row['runs']} ({row['open_runs']})"
        )
