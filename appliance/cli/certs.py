"""``greenhouse certs``: request, show and check certificates (sites and users).

``request`` makes keys and a CSR locally (private keys never leave ``--out``);
``show`` prints what a certificate states; ``check`` verifies it against the CA
(and a CRL) and prints ``valid: ...`` or fails with the exact reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from certs import (
    CLIENT_ROLES,
    CertificateInvalid,
    Purpose,
    Role,
    create_request,
    describe_certificate,
    load_certificate,
    load_crl,
    parse_role,
    verify_certificate,
    verify_crl,
)

__all__ = ["certs"]

_ROLES = click.Choice(sorted(r.value for r in CLIENT_ROLES))
_FILE = click.Path(dir_okay=False, path_type=Path)


@click.group()
def certs() -> None:
    """Request, inspect and check federation certificates."""


@certs.command()
@click.option("--role", required=True, type=_ROLES, help="The role to request.")
@click.option("--name", required=True, help="Node or user name, e.g. st-marys.")
@click.option("--org", "organization", help='Organization, e.g. "St Mary\'s".')
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the keys (0600) and the CSR.",
)
@click.option("--force", is_flag=True, help="Replace existing keys and CSR.")
def request(role: str, name: str, organization: str | None, out: Path, force: bool) -> None:
    """Make a TLS key, an Ed25519 signing key and a CSR in --out."""
    files = create_request(
        out, name=name, organization=organization, role=parse_role(role), overwrite=force
    )
    for path in (files.tls_key, files.signing_key, files.csr):
        click.echo(f"wrote {path}")
    click.echo(f"send {files.csr} to the federation admin; the keys stay in {out}")


@certs.command()
@click.argument("cert", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(cert: Path, as_json: bool) -> None:
    """Print what certificate CERT states (nothing is verified)."""
    info = describe_certificate(load_certificate(cert))
    fields = {
        "subject": info.subject,
        "issuer": info.issuer,
        "name": info.name,
        "kind": info.role.kind.value if info.role else None,
        "role": info.role.value if info.role else None,
        "organization": info.organization,
        "serial": info.serial_hex,
        "signing_key_sha256": info.signing_key_fingerprint,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "fingerprint_sha256": info.fingerprint,
    }
    if as_json:
        click.echo(json.dumps(fields, sort_keys=True))
        return
    for key, value in fields.items():
        click.echo(f"{key + ':':<20} {value if value is not None else '-'}")


@certs.command()
@click.argument("cert", type=_FILE)
@click.option("--ca", "ca_cert", required=True, type=_FILE, help="The federation CA certificate.")
@click.option("--crl", type=_FILE, help="A CRL to check revocation against.")
@click.option("--role", type=click.Choice([r.value for r in Role]), help="Require this role.")
def check(cert: Path, ca_cert: Path, crl: Path | None, role: str | None) -> None:
    """Say whether CERT is valid now, or exactly why not (non-zero exit)."""
    certificate = load_certificate(cert)
    authority = load_certificate(ca_cert)
    now = datetime.now(UTC)
    revocations = None if crl is None else verify_crl(load_crl(crl), ca_cert=authority, now=now)
    info = describe_certificate(certificate)
    purpose = Purpose.SERVER if info.role is Role.SERVER else Purpose.CLIENT
    try:
        identity = verify_certificate(
            certificate,
            ca_cert=authority,
            now=now,
            revocations=revocations,
            roles=None if role is None else {parse_role(role)},
            purpose=purpose,
        )
    except CertificateInvalid as exc:
        raise CertificateInvalid(exc.reason, f"invalid ({exc.reason.value}): {exc}") from None
    click.echo(
        f"valid: {identity.describe()}, expires {identity.not_after:%Y-%m-%d %H:%M} UTC"
        + ("" if revocations is not None else " (revocation not checked: no --crl)")
    )
