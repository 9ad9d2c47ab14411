"""``greenhouse supernode``: run a site's SuperNode in the foreground."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import click

import audit
from appliance.allocator import keep_freed_buffers
from appliance.appconfig import parse_config_pairs
from appliance.cli.audit import VKeyParam
from appliance.cli.health import health_address_option, health_service, metrics_address_option
from appliance.cli.reload import reload_on_sighup
from appliance.logs import configure_logging
from appliance.metrics import serve_metrics
from appliance.supernode.node import SuperNode, SuperNodeConfig
from appliance.supernode.policy import load_policy

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--superlink", "address", required=True, help="HOST:PORT of the Fleet API.")
@click.option("--ca", "ca", type=_FILE, help="Federation CA certificate.")
@click.option("--cert", type=_FILE, help="This node's certificate.")
@click.option("--key", type=_FILE, help="This node's TLS key (mode 0600).")
@click.option("--signing-key", type=_FILE, help="This node's Ed25519 signing key.")
@click.option(
    "--policy",
    "policy_path",
    type=_FILE,
    help="The site policy (site.toml): what may run here and what may leave.",
)
@click.option(
    "--crl",
    type=_FILE,
    help="Federation CRL (SecAgg+ refuses revoked neighbours); re-read on SIGHUP.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="DEVELOPMENT ONLY: plain TCP to a --insecure SuperLink; needs --name.",
)
@click.option("--name", default="", help="The node name claimed in --insecure mode.")
@click.option(
    "--superlink-audit-key",
    type=VKeyParam(),
    help="The SuperLink's audit verifier key (or a file holding it); without it the key "
    "offered at first contact is pinned in DATA_DIR/audit/superlink.vkey.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("supernode-data"),
    show_default=True,
)
@click.option(
    "--node-config",
    "node_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Site settings passed to the ClientApp as context.node_config; repeatable.",
)
@click.option(
    "--shutdown-grace",
    "shutdown_grace_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="On SIGTERM, seconds a message in progress may take to finish and be answered "
    "before its ClientApp is killed.",
)
@click.option(
    "--audit-interval",
    "audit_interval_s",
    type=click.FloatRange(min=0.1),
    default=SuperNodeConfig.audit_interval_s,
    show_default=True,
    help="Seconds new site audit entries may wait for a signed tree head.",
)
@health_address_option
@metrics_address_option
def supernode(
    address: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    signing_key: Path | None,
    crl: Path | None,
    policy_path: Path | None,
    insecure: bool,
    name: str,
    superlink_audit_key: audit.VerifierKey | None,
    data_dir: Path,
    node_config: tuple[str, ...],
    shutdown_grace_s: float,
    audit_interval_s: float,
    health_address: str | None,
    metrics_address: str | None,
) -> None:
    """Dial out to the SuperLink and run ClientApps for it (no inbound port).

    SIGHUP re-reads the site policy, the CRL and the node's certificate and keys
    (switching to a renewed certificate the SuperLink accepts); SIGTERM lets a
    message in progress finish (--shutdown-grace), signs the site audit log's last
    tree head and exits.
    """
    configure_logging("json", level=logging.INFO)
    keep_freed_buffers()
    if insecure and not name:
        raise click.UsageError("--insecure needs --name (the node name to claim)")
    if not insecure and None in (ca, cert, key, signing_key):
        raise click.UsageError("--ca, --cert, --key and --signing-key are required")
    node = SuperNode(
        SuperNodeConfig(
            superlink=address,
            ca_certificate=ca,
            certificate=cert,
            key=key,
            signing_key=signing_key,
            data_dir=data_dir,
            node_config=parse_config_pairs(node_config),
            crl=crl,
            policy=load_policy(policy_path) if policy_path else None,
            policy_path=policy_path,
            superlink_audit_key=superlink_audit_key,
            unsafe_insecure=insecure,
            unsafe_name=name,
            shutdown_grace_s=shutdown_grace_s,
            audit_interval_s=audit_interval_s,
        )
    )

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        node.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    # SIGHUP re-reads site.toml, the CRL and the node's own certificate and keys (the
    # node's housekeeping thread does the work).
    reload_on_sighup(node.request_reload)
    # After SuperNode(): its isolation check must run before any thread starts.
    # SERVING while connected to the SuperLink, NOT_SERVING while reconnecting.
    with (
        health_service(health_address) as set_serving,
        serve_metrics(metrics_address, node.metrics.registry),
    ):
        node.run(on_connection=set_serving)
