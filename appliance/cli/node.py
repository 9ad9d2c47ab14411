"""``greenhouse node``: a federation admin enrols, removes and lists sites."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from appliance.federation import ControlClient, load_federation

_FEDERATION = click.option("--federation", help="Federation name (default: the only/default one).")
_APP = click.option(
    "--app",
    "app_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
)


@click.group()
def node() -> None:
    """Enrol, remove and list nodes (federation admin)."""


@node.command(name="add")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_FEDERATION
@_APP
def add(cert: Path, federation: str | None, app_dir: Path) -> None:
    """Enrol the site whose node certificate is CERT (name + fingerprint)."""
    with ControlClient(load_federation(federation, app_dir)) as client:
        info = client.add_node(cert.read_bytes())
    click.echo(
        f"enrolled {info.name} as node {info.node_id} (certificate sha256:{info.cert_fingerprint})"
    )


@node.command(name="renew")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_FEDERATION
@_APP
def renew(cert: Path, federation: str | None, app_dir: Path) -> None:
    """Stage CERT as the renewed certificate of the enrolled site it names.

    The site keeps its node id. Both certificates are accepted until the SuperNode
    first connects with the new one (after a SIGHUP or a restart); from then on only
    the new one is.
    """
    with ControlClient(load_federation(federation, app_dir)) as client:
        info = client.add_node(cert.read_bytes(), renew=True)
    click.echo(
        f"staged the renewal of {info.name} (node {info.node_id}): certificate "
        f"sha256:{info.renewal_cert_fingerprint} is accepted beside "
        f"sha256:{info.cert_fingerprint} until the node connects with it"
    )


@node.command(name="remove")
@click.argument("name")
@_FEDERATION
@_APP
def remove(name: str, federation: str | None, app_dir: Path) -> None:
    """Remove an enrolled node; its certificate no longer admits it."""
    with ControlClient(load_federation(federation, app_dir)) as client:
        client.remove_node(name)
    click.echo(f"removed {name}")


@node.command(name="ls")
@_FEDERATION
@_APP
def ls(federation: str | None, app_dir: Path) -> None:
    """List enrolled nodes, when they were last seen and whether they are online."""
    with ControlClient(load_federation(federation, app_dir)) as client:
        nodes = client.nodes()
    click.echo(f"{'name':<20} {'node id':>20}  {'status':<7}  last seen")
    for info in nodes:
        seen = (
            datetime.fromtimestamp(info.last_seen_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if info.last_seen_at
            else "never"
        )
        status = "online" if info.online else "offline"
        renewal = "  (renewal staged)" if info.renewal_cert_fingerprint else ""
        click.echo(f"{info.name:<20} {info.node_id:>20}  {status:<7}  {seen}{renewal}")
