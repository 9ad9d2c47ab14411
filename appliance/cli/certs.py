"""``greenhouse certs``: request, show and check certificates (sites and users).

``request`` makes keys and a CSR locally (private keys never leave ``--out``);
``show`` prints what a certificate states (or what a CSR requests); ``check``
verifies a certificate against the CA (and a CRL) and prints ``valid: ...`` or
fails with the exact reason.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import click
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certs import (
    CLIENT_ROLES,
    CertificateInvalid,
    Purpose,
    Role,
    create_request,
    describe_certificate,
    load_certificate,
    load_crl,
    load_csr,
    parse_role,
    verify_certificate,
    verify_crl,
    verify_request,
)
from certs.identity import key_fingerprint

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
    """Print what certificate CERT states (nothing is verified), or what the CSR CERT
    requests (its self-signature and signing-key proof are checked)."""
    fields = _request_fields(cert) if _is_request(cert) else _certificate_fields(cert)
    if as_json:
        click.echo(json.dumps(fields, sort_keys=True))
        return
    for key, value in fields.items():
        click.echo(f"{key + ':':<20} {value if value is not None else '-'}")


def _is_request(path: Path) -> bool:
    try:
        return b"-----BEGIN CERTIFICATE REQUEST-----" in path.read_bytes()
    except OSError:
        return False  # load_certificate reports it


def _request_fields(path: Path) -> dict[str, str | None]:
    request = verify_request(load_csr(path))
    spki = request.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return {
        "kind": "request",
        "name": request.name,
        "organization": request.organization,
        "requested_role": request.requested_role.value if request.requested_role else None,
        "signing_key_sha256": (
            key_fingerprint(request.signing_key) if request.signing_key else None
        ),
        "public_key_sha256": hashlib.sha256(spki).hexdigest(),
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "checked": "self-signature and signing-key proof verify",
    }


def _certificate_fields(cert: Path) -> dict[str, str | None]:
    info = describe_certificate(load_certificate(cert))
    return {
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
