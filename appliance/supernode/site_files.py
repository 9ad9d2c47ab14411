"""What a SuperNode re-reads on SIGHUP besides ``site.toml``: its own certificate and
keys, and the federation CRL.

The node's certificate, TLS key and signing key are compared with the ones in use
(by SHA-256); when they changed, the SuperNode tries the new identity (see
``SuperNode._switch_identity``) and :meth:`SiteFiles.adopt_identity` records them
once the SuperLink accepted it. Until then the files on disk are not the identity
in use, and SecAgg+ keeps the one the node signs with.

The CRL is what SecAgg+ judges neighbours' keys with. On SIGHUP it is read and
verified against the CA at once (not only when its file's stamp changes) and the
SecAgg+ credentials are rebuilt around it; an invalid file is logged and the
previous list stays in force. The caller swaps the new credentials in with the
policy reload that follows, which rebuilds the host mods.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from appliance.logs import get_logger
from appliance.supernode.secagg_keys import secagg_credentials
from certs import CertError, load_certificate, load_crl, verify_crl
from secagg import CredentialsSource

__all__ = ["SiteFiles"]

_log = get_logger("appliance.supernode")


class _Config(Protocol):
    @property
    def ca_certificate(self) -> Path | None: ...
    @property
    def certificate(self) -> Path | None: ...
    @property
    def key(self) -> Path | None: ...
    @property
    def signing_key(self) -> Path | None: ...
    @property
    def crl(self) -> Path | None: ...
    @property
    def unsafe_insecure(self) -> bool: ...


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


class SiteFiles:
    """The node's credential files as they were at start, and their SIGHUP re-read."""

    def __init__(self, config: _Config) -> None:
        self._config = config
        self._identity = self.digests()

    def _identity_files(self) -> list[tuple[str, Path]]:
        cfg = self._config
        files = (("certificate", cfg.certificate), ("key", cfg.key))
        return [(n, p) for n, p in (*files, ("signing key", cfg.signing_key)) if p is not None]

    def identity_changed(self) -> list[str]:
        """Which of the node's certificate and keys differ on disk from the ones in use."""
        return [n for n, p in self._identity_files() if _digest(p) != self._identity[n]]

    def adopt_identity(self, digests: dict[str, str]) -> None:
        """The files as hashed by :meth:`digests` are now the identity in use."""
        self._identity = digests

    def digests(self) -> dict[str, str]:
        """The SHA-256 of each identity file as it is on disk now."""
        return {name: _digest(path) for name, path in self._identity_files()}

    def reload(self, current: CredentialsSource | None) -> CredentialsSource | None:
        """SecAgg+ credentials around the CRL as it is now, or ``current`` if it cannot be used.

        Never raises: what was not reloaded is logged.
        """
        cfg = self._config
        changed = self.identity_changed()
        if cfg.unsafe_insecure or current is None or cfg.crl is None:
            return current
        assert cfg.ca_certificate  # as at start (checked by the SuperNode)
        assert cfg.certificate
        assert cfg.signing_key
        try:
            ca_cert = load_certificate(cfg.ca_certificate)
            crl = verify_crl(load_crl(cfg.crl), ca_cert=ca_cert, now=datetime.now(UTC))
            if changed:  # SecAgg+ keeps the identity in use: not the files on disk
                _log.warning(
                    "SIGHUP: CRL valid, but not swapped in while the node's new "
                    "certificate is not in use"
                )
                return current
            fresh = secagg_credentials(
                ca_certificate=cfg.ca_certificate,
                certificate=cfg.certificate,
                signing_key=cfg.signing_key,
                crl=cfg.crl,
            )
        except CertError as exc:
            _log.error("SIGHUP: CRL NOT reloaded; the previous one stays", error=str(exc))
            return current
        except Exception:  # the housekeeping thread that called must go on
            _log.exception("SIGHUP: CRL NOT reloaded; the previous one stays")
            return current
        _log.warning(
            "SIGHUP: CRL reloaded",
            revoked=len(crl.serials),
            this_update=crl.this_update.isoformat(),
            next_update=crl.next_update.isoformat(),
        )
        return fresh
