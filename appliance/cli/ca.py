"""``greenhouse ca``: the federation admin's CA commands.

Each command opens the CA directory (``--dir``), calls one :mod:`certs` function
and prints what it did and the paths it wrote. The CA passphrase comes from
``GREENHOUSE_CA_PASSPHRASE`` or a prompt, and only when the CA key is used.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.serialization import Encoding

from certs import (
    CLIENT_ROLES,
    REVOCATION_REASONS,
    CertificateAuthority,
    CertificateRecord,
    Status,
    certificate_pem,
    describe_certificate,
    issue_server_files,
    load_csr,
    parse_role,
    parse_serial,
)
from certs.ca import CRL_FILE
from certs.files import write_atomic
from certs.identity import serial_hex

__all__ = ["ca"]

PASSPHRASE_ENV = "GREENHOUSE_CA_PASSPHRASE"  # noqa: S105 (an env var name, not a secret)
_DURATION = re.compile(r"(\d+)([wdhm]?)")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "": "days"}


def _passphrase(*, confirm: bool = False) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if not value:
        value = click.prompt("CA passphrase", hide_input=True, confirmation_prompt=confirm)
    return value.encode()


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _open(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.open(ca_dir, passphrase=_passphrase)


def _wrote(*paths: Path) -> None:
    for path in paths:
        click.echo(f"wrote {path}")


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = _DURATION.fullmatch(str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration like 14d, 12h, 2w or 30m", param, ctx)
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _ip(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[IPv4Address | IPv6Address]:
    try:
        return [ip_address(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_ca_dir = click.option(
    "--dir",
    "ca_dir",
    required=True,
    envvar="GREENHOUSE_CA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The CA directory.",
)


@click.group()
def ca() -> None:
    """Run the federation CA: init, issue, sign, revoke, publish CRLs, list."""


@ca.command()
@_ca_dir
@click.option("--name", required=True, help='The CA name, e.g. "Federation X".')
@click.option("--no-passphrase", is_flag=True, help="Store the CA key UNENCRYPTED.")
@click.option("--days", type=click.IntRange(1, 7300), default=3650, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Also copy the CA certificate here.")
def init(ca_dir: Path, name: str, no_passphrase: bool, days: int, out: Path | None) -> None:
    """Create the federation CA (ECDSA P-256) in --dir."""
    passphrase = None if no_passphrase else _passphrase(confirm=True)
    authority = CertificateAuthority.init(
        ca_dir, name=name, passphrase=passphrase, actor=_actor(), days=days
    )
    _wrote(ca_dir / "ca.pem", ca_dir / "ca.key")
    if out is not None:
        target = out / "ca.pem" if out.is_dir() else out
        _wrote(
            write_atomic(target, certificate_pem(authority.certificate), mode=0o644, overwrite=True)
        )
    if no_passphrase:
        click.echo("warning: the CA key is NOT encrypted; protect it", err=True)


@ca.command("issue-server")
@_ca_dir
@click.option("--host", "hosts", multiple=True, help="DNS name of the SuperLink; repeatable.")
@click.option("--ip", "ips", multiple=True, callback=_ip, help="IP address; repeatable.")
@click.option("--days", type=click.IntRange(1, 397), help="Lifetime (default 90 days).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: --dir/server).",
)
@click.option("--force", is_flag=True, help="Replace existing files (rotation).")
def issue_server(
    ca_dir: Path,
    hosts: tuple[str, ...],
    ips: list[IPv4Address | IPv6Address],
    days: int | None,
    out: Path | None,
    force: bool,
) -> None:
    """Generate the SuperLink key and issue its server certificate."""
    files, cert = issue_server_files(
        _open(ca_dir),
        out or ca_dir / "server",
        hosts=hosts,
        ips=ips,
        actor=_actor(),
        days=days,
        overwrite=force,
    )
    info = describe_certificate(cert)
    click.echo(
        f"issued server certificate serial {info.serial_hex}, expires {info.not_after:%Y-%m-%d}"
    )
    _wrote(files.certificate, files.key, files.ca_certificate)


@ca.command()
@click.argument("request", type=click.Path(dir_okay=False, path_type=Path))
@_ca_dir
@click.option("--role", required=True, type=click.Choice(sorted(r.value for r in CLIENT_ROLES)))
@click.option("--days", type=click.IntRange(1, 397), help="Lifetime (default 90 nodes, 30 users).")
@click.option("--override-role", is_flag=True, help="Bind --role even if the CSR asks another.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Certificate file or directory (default: next to the CSR).",
)
def sign(
    request: Path, ca_dir: Path, role: str, days: int | None, override_role: bool, out: Path | None
) -> None:
    """Verify the CSR REQUEST and issue a certificate with --role."""
    authority = _open(ca_dir)
    cert = authority.sign(
        load_csr(request),
        role=parse_role(role),
        actor=_actor(),
        days=days,
        override_role=override_role,
    )
    info = describe_certificate(cert)
    if out is None:
        target = request.with_suffix(".pem")
    else:
        target = out / f"{info.name}.pem" if out.is_dir() else out
    write_atomic(target, certificate_pem(cert), mode=0o644, overwrite=True)
    click.echo(
        f"issued {role} certificate for {info.name} serial {info.serial_hex},"
        f" expires {info.not_after:%Y-%m-%d}"
    )
    _wrote(target)


def _write_crl(authority: CertificateAuthority, days: int, out: Path | None) -> Path:
    crl = authority.crl(actor=_actor(), days=days)
    target = out or authority.directory / CRL_FILE
    if target.is_dir():
        target = target / CRL_FILE
    return write_atomic(target, crl.public_bytes(Encoding.PEM), mode=0o644, overwrite=True)


_crl_days = click.option(
    "--crl-days",
    "crl_days",
    type=click.IntRange(1, 366),
    default=7,
    show_default=True,
    help="CRL validity (nextUpdate).",
)


@ca.command()
@click.argument("serial")
@_ca_dir
@click.option(
    "--reason",
    type=click.Choice(sorted(REVOCATION_REASONS)),
    default="unspecified",
    show_default=True,
)
@_crl_days
@click.option("--out", type=click.Path(path_type=Path), help="CRL file (default: --dir/crl.pem).")
def revoke(serial: str, ca_dir: Path, reason: str, crl_days: int, out: Path | None) -> None:
    """Revoke the certificate with hex SERIAL and publish a new CRL."""
    try:
        number = parse_serial(serial)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SERIAL") from None
    authority = _open(ca_dir)
    entry = authority.revoke(number, reason=REVOCATION_REASONS[reason], actor=_actor())
    click.echo(f"revoked serial {serial_hex(number)} ({entry.subject}), reason {reason}")
    _wrote(_write_crl(authority, crl_days, out))


@ca.command()
@_ca_dir
@_crl_days
@click.option("--out", type=click.Path(path_type=Path), help="CRL file (default: --dir/crl.pem).")
def crl(ca_dir: Path, crl_days: int, out: Path | None) -> None:
    """Write the current CRL (publish it to the SuperLink)."""
    _wrote(_write_crl(_open(ca_dir), crl_days, out))


def _row(record: CertificateRecord, now: datetime) -> dict[str, Any]:
    return {
        "serial": record.serial_hex,
        "status": record.status.value,
        "role": record.role.value if record.role else None,
        "not_after": record.not_after.isoformat(),
        "days_left": round((record.not_after - now) / timedelta(days=1), 1),
        "subject": record.subject,
        "fingerprint": record.fingerprint,
        "revocation_reason": record.revocation_reason,
    }


@ca.command("list")
@_ca_dir
@click.option(
    "--expiring", type=_Duration(), help="Only valid certificates expiring within, e.g. 14d."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(ca_dir: Path, expiring: timedelta | None, as_json: bool) -> None:
    """Show every issued certificate with its status and expiry."""
    authority = _open(ca_dir)
    if not authority.key_encrypted:
        click.echo(f"warning: the CA key in {ca_dir} is not passphrase-encrypted", err=True)
    now = datetime.now(UTC)
    records = authority.records(now=now)
    if expiring is not None:
        records = tuple(
            r for r in records if r.status is Status.VALID and r.not_after - now <= expiring
        )
    if not records and not as_json:
        click.echo("no certificates" + (" expiring within that window" if expiring else ""))
    for record in records:
        row = _row(record, now)
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
        else:
            click.echo(
                f"{row['serial']:<40} {row['status']:<8} {row['role'] or '-':<16}"
                f" {record.not_after:%Y-%m-%d} {row['subject']}"
            )
