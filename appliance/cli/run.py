"""``greenhouse run``: run an app locally (``--local``) or submit it to a federation."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.appconfig import load_app_spec, merge_run_config, parse_config_pairs
from appliance.bundle import build_bundle
from appliance.cli.runs import follow_run
from appliance.federation import ControlClient, load_federation
from appliance.local import run_local_app


@click.command()
@click.argument("app_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--local", "local", is_flag=True, help="Run in this process with logical nodes.")
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Number of logical nodes (with --local).",
)
@click.option("--federation", help="Federation to submit to (see [tool.greenhouse.federations]).")
@click.option(
    "--run-config",
    "run_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override the app's run config; repeatable.",
)
@click.option("--detach", is_flag=True, help="Submit and return without streaming the log.")
@click.option(
    "--signature",
    "signature_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A publisher's signature over the bundle (greenhouse app sign), sent with the run.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the logical node ids.")
def run(
    app_dir: Path,
    local: bool,
    nodes: int,
    federation: str | None,
    run_config: tuple[str, ...],
    detach: bool,
    seed: int,
    signature_path: Path | None,
) -> None:
    """Run the app in APP_DIR (default: the current directory)."""
    overrides = parse_config_pairs(run_config)
    if local:
        run_local_app(app_dir, num_nodes=nodes, run_config_overrides=overrides, seed=seed)
        return
    spec = load_app_spec(app_dir)
    config = merge_run_config(spec.config, overrides)
    bundle = build_bundle(app_dir)
    with ControlClient(load_federation(federation, app_dir)) as client:
        run_id = client.submit(
            bundle,
            config,
            app_name=spec.name,
            app_version=spec.version,
            signature=signature_path.read_bytes() if signature_path else b"",
        )
        click.echo(f"run {run_id} submitted (bundle sha256:{bundle.sha256})")
        if detach:
            return
        follow_run(client, run_id)
