"""``greenhouse run``: run an app, locally for now (``--local``)."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.appconfig import parse_config_pairs
from appliance.errors import AppConfigError
from appliance.local import run_local_app


@click.command()
@click.argument("app_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--local", "local", is_flag=True, help="Run in this process with logical nodes.")
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Number of logical nodes (with --local).",
)
@click.option(
    "--run-config",
    "run_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override the app's run config; repeatable.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the logical node ids.")
def run(app_dir: Path, local: bool, nodes: int, run_config: tuple[str, ...], seed: int) -> None:
    """Run the app in APP_DIR."""
    if not local:
        raise AppConfigError(
            "submitting to a federation needs a SuperLink; for now run with --local"
        )
    run_local_app(
        app_dir, num_nodes=nodes, run_config_overrides=parse_config_pairs(run_config), seed=seed
    )
