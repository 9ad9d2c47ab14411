"""``greenhouse policy``: validate a site policy offline (``greenhouse policy check``).

The same validation the SuperNode runs at start and on SIGHUP; an invalid file
gives one line naming the key and exit code 7.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.supernode.policy import SitePolicy, load_policy


@click.group()
def policy() -> None:
    """Check site policy files (site administrators)."""


def _summary(site: SitePolicy) -> dict[str, str]:
    apps, privacy, egress = site.apps, site.privacy, site.egress
    execution = site.execution
    publishers = ", ".join(f"{k.fingerprint[:16]}... ({k.label})" for k in apps.trusted_publishers)
    allowed = f"{len(apps.allow)} allowed bundle hash(es)"
    if publishers:
        allowed += f"; trusted publishers: {publishers}"
    elif not apps.allow:
        allowed = "none allowed: every bundle will be refused"
    secagg = (
        f"SecAgg+ required (min cohort {privacy.min_secagg_cohort})"
        if privacy.require_secure_aggregation
        else "SecAgg+ not required"
    )
    dp = f"DP: {privacy.require_dp.value}" if privacy.require_dp else "DP not required"
    if privacy.clip_norm is not None:
        dp += f", clip norm {privacy.clip_norm:g}"
    if privacy.max_epsilon_per_run is not None:
        dp += f", epsilon caps {privacy.max_epsilon_per_run:g}/run"
    if privacy.max_epsilon_total is not None:
        dp += f", {privacy.max_epsilon_total:g} total"
    return {
        "apps": allowed,
        "privacy": f"{secagg}; {dp}",
        "egress": (
            f"replies <= {egress.max_reply_bytes} bytes; metric keys: "
            f"{', '.join(sorted(egress.allowed_metric_keys)) or 'none'}; config strings "
            f"{'allowed' if egress.allow_config_strings else 'refused'}; query "
            f"{'allowed' if egress.allow_query else 'refused'}"
        ),
        "execution": (
            f"memory {execution.memory_mb} MB, CPU {execution.cpu_seconds} s and wall "
            f"{execution.wall_seconds} s per message, network {execution.network.value}"
            + (f", data {execution.data_path} (read-only)" if execution.data_path else "")
        ),
        "approval": site.approval.mode.value,
    }


@policy.command()
@click.argument("site_toml", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(site_toml: Path, as_json: bool) -> None:
    """Validate SITE_TOML; print its policy hash and a summary."""
    site = load_policy(site_toml)
    summary = _summary(site)
    if as_json:
        body = {"file": str(site_toml), "valid": True, "policy_hash": site.policy_hash, **summary}
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{site_toml}: valid")
    click.echo(f"policy hash: {site.policy_hash}")
    for section, text in summary.items():
        click.echo(f"{section + ':':<11}{text}")
