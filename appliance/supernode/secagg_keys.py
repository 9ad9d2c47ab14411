"""The SuperNode's SecAgg+ credentials: its own key behind a SecAgg-only signer, and
the federation CA as the judge of every neighbour's key.

The node's Ed25519 signing key never reaches the ClientApp process: SecAgg+ runs as
a host mod in the SuperNode (site infrastructure, inside the site's boundary), and
signs only SecAgg+ payloads. A neighbour's key is accepted only from a node
certificate that the federation CA issued (and the CRL, when the site has one, does
not revoke), so the SuperLink cannot insert keys of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.context import Context
from appliance.logs import get_logger
from certs import CrlFile, Role, load_certificate, load_signing_key
from certs.verify import verify_certificate
from secagg import CredentialsSource, Ed25519Signer, NodeCredentials
from secagg.identity import restrict_to_secagg

__all__ = ["secagg_credentials"]

_log = get_logger("appliance.supernode.secagg")


def secagg_credentials(
    *, ca_certificate: Path, certificate: Path, signing_key: Path, crl: Path | None
) -> CredentialsSource:
    """A credentials source for :func:`secagg.make_secagg_mod` run by this SuperNode."""
    ca_cert = load_certificate(ca_certificate)
    own = load_certificate(certificate).public_bytes(Encoding.DER)
    signer = restrict_to_secagg(Ed25519Signer(load_signing_key(signing_key)))
    revocations = CrlFile(crl, ca_cert=ca_cert) if crl is not None else None
    if revocations is None:
        _log.warning("no CRL given: SecAgg+ cannot refuse a revoked neighbour's key")

    def key_directory(node_id: int, credential: bytes) -> bytes:
        cert = x509.load_der_x509_certificate(credential)
        identity = verify_certificate(
            cert,
            ca_cert=ca_cert,
            now=datetime.now(UTC),
            revocations=revocations() if revocations is not None else None,
            roles={Role.NODE},
        )
        if identity.signing_key is None:
            raise ValueError(f"node {node_id}'s certificate binds no signing key")
        return identity.signing_key

    credentials = NodeCredentials(signer=signer, credential=own, key_directory=key_directory)

    def source(context: Context) -> NodeCredentials:
        return credentials

    return source
