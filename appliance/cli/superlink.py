"""``greenhouse superlink``: run the SuperLink in the foreground."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import click

from appliance.allocator import share_one_heap
from appliance.cli.health import health_address_option, health_service, metrics_address_option
from appliance.cli.reload import reload_on_sighup
from appliance.logs import configure_logging
from appliance.metrics import serve_metrics
from appliance.superlink.audit_trail import AuditSettings
from appliance.superlink.server import SuperLink, SuperLinkConfig

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--ca", "ca", type=_FILE, help="Federation CA certificate.")
@click.option("--cert", type=_FILE, help="SuperLink server certificate.")
@click.option("--key", type=_FILE, help="SuperLink server key (mode 0600).")
@click.option(
    "--crl", type=_FILE, help="Certificate revocation list (re-read when it changes and on SIGHUP)."
)
@click.option(
    "--database",
    envvar="GREENHOUSE_DATABASE_URL",
    help="SQLAlchemy URL (default: SQLite in the data dir). From $GREENHOUSE_DATABASE_URL "
    "when not given: keeps a password off the command line.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("superlink-data"),
    show_default=True,
)
@click.option("--fleet-address", default="127.0.0.1:9092", show_default=True)
@click.option("--control-address", default="127.0.0.1:9093", show_default=True)
@click.option(
    "--node-grace",
    "node_grace_s",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds a node may be offline before its pending work fails.",
)
@click.option(
    "--keepalive",
    "keepalive_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between keepalives on node streams (also re-checks revocation).",
)
@click.option(
    "--audit-key",
    type=_FILE,
    help="The audit log's Ed25519 signing key (default: DATA_DIR/audit.key, created once).",
)
@click.option(
    "--audit-origin",
    default=AuditSettings.origin,
    show_default=True,
    help="The audit log's name in its signed tree heads (no spaces or '+').",
)
@click.option(
    "--audit-interval",
    "audit_interval_s",
    type=click.FloatRange(min=0.1),
    default=AuditSettings.checkpoint_interval_s,
    show_default=True,
    help="Seconds new audit entries may wait for a signed tree head.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="DEVELOPMENT ONLY: no TLS, claimed identities, unsigned replies.",
)
@health_address_option
@metrics_address_option
def superlink(
    insecure: bool,
    keepalive_s: float,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    crl: Path | None,
    database: str | None,
    data_dir: Path,
    fleet_address: str,
    control_address: str,
    node_grace_s: float,
    audit_key: Path | None,
    audit_origin: str,
    audit_interval_s: float,
    health_address: str | None,
    metrics_address: str | None,
) -> None:
    """Serve the Fleet API (SuperNodes) and the Control API (users) over mTLS.

    SIGHUP re-reads the server certificate, key, CA and CRL; SIGTERM fails the runs in
    flight ("superlink shut down"), signs the audit log's last tree head and exits.
    """
    configure_logging("json", level=logging.INFO)
    share_one_heap()
    if not insecure and None in (ca, cert, key):
        raise click.UsageError(
            "--ca, --cert and --key are required (or --insecure for development)"
        )
    link = SuperLink(
        SuperLinkConfig(
            ca_certificate=ca,
            certificate=cert,
            key=key,
            crl=crl,
            database=database,
            data_dir=data_dir,
            fleet_address=fleet_address,
            control_address=control_address,
            node_grace_s=node_grace_s,
            keepalive_s=keepalive_s,
            audit=AuditSettings(
                key=audit_key, origin=audit_origin, checkpoint_interval_s=audit_interval_s
            ),
            unsafe_insecure=insecure,
        )
    )

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        link.stop_async()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    reload_on_sighup(link.reload_credentials)
    with (
        health_service(health_address) as set_serving,
        serve_metrics(metrics_address, link.metrics.registry),
    ):
        link.start()
        set_serving(True)
        click.echo(
            f"superlink ready: fleet {link.fleet_port}, control {link.control_port}", err=True
        )
        link.wait()
        set_serving(False)
        link.stop()
