"""``greenhouse health``: probe a SuperLink's or SuperNode's health service.

For container health checks and Kubernetes exec probes: prints ``SERVING`` and
exits 0; otherwise one line on stderr and exit code 1 (``HealthError``). Also the
operations options the long-running commands share: ``--health-address`` and
``--metrics-address`` (``appliance.metrics``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import click

from appliance.health import HealthError, HealthServer, HealthStatus, check
from appliance.metrics import MetricsError, parse_address

#: ``--health-address`` of ``greenhouse superlink`` and ``greenhouse supernode``.
health_address_option = click.option(
    "--health-address",
    metavar="HOST:PORT",
    envvar="GREENHOUSE_HEALTH_ADDRESS",
    help="Also serve the standard gRPC health service here, in plain text and without "
    "data (for probes: greenhouse health HOST:PORT). Bind it to loopback or a pod-local "
    "address. Default: $GREENHOUSE_HEALTH_ADDRESS (the container image sets 127.0.0.1:9094).",
)


def _metrics_address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed address before anything starts."""
    if value is not None:
        try:
            parse_address(value)
        except MetricsError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


#: ``--metrics-address`` of ``greenhouse superlink`` and ``greenhouse supernode``.
metrics_address_option = click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    envvar="GREENHOUSE_METRICS_ADDRESS",
    callback=_metrics_address,
    help="Also serve Prometheus metrics at http://HOST:PORT/metrics: plain HTTP without "
    "authentication, counts and statuses only (no run ids, no data). Off by default; bind "
    "it where only your monitoring reaches. Default: $GREENHOUSE_METRICS_ADDRESS.",
)


@contextlib.contextmanager
def health_service(address: str | None) -> Iterator[Callable[[bool], None]]:
    """Serve health at ``address`` (if given) for the block; yield the SERVING switch.

    The service starts NOT_SERVING and says NOT_SERVING for good when the block ends.
    """
    if address is None:
        yield lambda _serving: None
        return
    server = HealthServer(address)
    server.start()
    try:
        yield server.set_serving
    finally:
        server.stop()


@click.command()
@click.argument("address")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@click.option(
    "--live",
    is_flag=True,
    help="Succeed on NOT_SERVING too (the process answers): a liveness probe that does "
    "not restart a SuperNode only because the SuperLink is unreachable.",
)
def health(address: str, timeout_s: float, live: bool) -> None:
    """Ask the health service at ADDRESS (HOST:PORT, see --health-address) for its status."""
    status = check(address, timeout_s=timeout_s)
    if status is HealthStatus.SERVING or (live and status is HealthStatus.NOT_SERVING):
        click.echo(status.name)
        return
    raise HealthError(f"{address} is {status.name}")
