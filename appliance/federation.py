"""Federation connection details and the Control API client users talk through.

A federation is an address (the SuperLink's Control API), the federation CA
certificate, and the user's certificate and key. They come from the app's
``pyproject.toml``::

    [tool.greenhouse.federations]
    default = "hospitals"

    [tool.greenhouse.federations.hospitals]
    address = "superlink.example.org:9093"
    ca = "certs/ca.pem"            # relative to the file that names it
    cert = "certs/alice.pem"
    key = "certs/alice.key"

    [tool.greenhouse.federations.dev]  # DEVELOPMENT ONLY, for a --insecure SuperLink
    address = "127.0.0.1:9093"
    insecure = true
    user = "alice"                 # claimed, not verified

or from the user's ``federations.toml`` (``$XDG_CONFIG_HOME/greenhouse/``, overridden by
``GREENHOUSE_CONFIG_DIR``) with the same tables under ``[federations]``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from appliance.bundle import Bundle
from appliance.context import UserConfig
from appliance.errors import AppConfigError
from appliance.proto import control_pb2 as pb
from appliance.proto.control_pb2_grpc import ControlStub
from appliance.transport import iter_chunks
from certs import Role, client_credentials
from certs.unsafe_dev import UnsafeIdentityHeader

__all__ = ["ControlClient", "Federation", "load_federation", "user_config_dir"]


@dataclass(frozen=True)
class Federation:
    """How to reach one federation's Control API as one user."""

    name: str
    address: str
    ca_certificate: Path | None
    certificate: Path | None
    key: Path | None
    #: DEVELOPMENT ONLY (a ``--insecure`` SuperLink): plain TCP and a claimed identity.
    unsafe_insecure: bool = False
    unsafe_user: str = ""
    unsafe_role: str = "data-scientist"


def user_config_dir() -> Path:
    """Where the user's ``federations.toml`` lives."""
    if "GREENHOUSE_CONFIG_DIR" in os.environ:
        return Path(os.environ["GREENHOUSE_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "greenhouse"


def _tables(path: Path, *keys: str) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AppConfigError(f"{path}: cannot read: {exc}") from None
    for key in keys:
        data = data.get(key, {})
    return data if isinstance(data, dict) else None


def _pick(
    tables: dict[str, Any], name: str | None, source: Path
) -> tuple[str, dict[str, Any]] | None:
    entries = {k: v for k, v in tables.items() if isinstance(v, dict)}
    if name is None:
        name = tables.get("default") if isinstance(tables.get("default"), str) else None
        if name is None and len(entries) == 1:
            name = next(iter(entries))
        if name is None:
            if not entries:
                return None
            raise AppConfigError(
                f"{source}: several federations ({', '.join(sorted(entries))}); "
                "pick one with --federation"
            )
    entry = entries.get(name)
    return None if entry is None else (name, entry)


def _federation(name: str, entry: dict[str, Any], source: Path) -> Federation:
    if entry.get("insecure") is True:
        if not isinstance(entry.get("address"), str) or not isinstance(entry.get("user"), str):
            raise AppConfigError(f"{source}: insecure federation {name!r} needs address and user")
        return Federation(
            name=name,
            address=entry["address"],
            ca_certificate=None,
            certificate=None,
            key=None,
            unsafe_insecure=True,
            unsafe_user=entry["user"],
            unsafe_role=str(entry.get("role", "data-scientist")),
        )
    missing = [k for k in ("address", "ca", "cert", "key") if not isinstance(entry.get(k), str)]
    if missing:
        raise AppConfigError(f"{source}: federation {name!r} lacks {', '.join(missing)}")
    base = source.parent
    return Federation(
        name=name,
        address=entry["address"],
        ca_certificate=(base / entry["ca"]).resolve(),
        certificate=(base / entry["cert"]).resolve(),
        key=(base / entry["key"]).resolve(),
    )


def load_federation(name: str | None, app_dir: Path | None = None) -> Federation:
    """Find federation ``name`` (or the default) in the app's pyproject, then the user's file.

    Raises:
        AppConfigError: no such federation, or its entry is incomplete.
    """
    sources: list[tuple[Path, tuple[str, ...]]] = []
    if app_dir is not None:
        sources.append((Path(app_dir) / "pyproject.toml", ("tool", "greenhouse", "federations")))
    sources.append((user_config_dir() / "federations.toml", ("federations",)))
    for path, keys in sources:
        tables = _tables(path, *keys)
        if tables:
            picked = _pick(tables, name, path)
            if picked is not None:
                return _federation(picked[0], picked[1], path)
    where = " or ".join(str(p) for p, _ in sources)
    wanted = f"federation {name!r}" if name else "federation"
    raise AppConfigError(f"no {wanted} configured in {where}")


class ControlClient:
    """The Control API as a user sees it (mTLS with the user's certificate)."""

    def __init__(self, federation: Federation) -> None:
        if federation.unsafe_insecure:
            self._channel = grpc.intercept_channel(
                grpc.insecure_channel(federation.address),
                UnsafeIdentityHeader(Role(federation.unsafe_role), federation.unsafe_user),
            )
        else:
            assert federation.ca_certificate
            assert federation.certificate
            assert federation.key
            credentials = client_credentials(
                ca_certificate=federation.ca_certificate,
                certificate=federation.certificate,
                key=federation.key,
            )
            self._channel = grpc.secure_channel(federation.address, credentials)
        self._stub = ControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def submit(
        self,
        bundle: Bundle,
        run_config: UserConfig,
        *,
        app_name: str,
        app_version: str,
        signature: bytes = b"",
    ) -> int:
        """Upload the bundle (with its publisher ``signature``, if any) and start a run."""
        head = pb.SubmitRunHead(
            bundle_sha256=bundle.sha256,
            bundle_size=bundle.size,
            run_config_json=json.dumps(run_config, sort_keys=True),
            app_name=app_name,
            app_version=app_version,
            bundle_signature=signature,
        )

        def chunks() -> Iterator[pb.SubmitRunChunk]:
            yield pb.SubmitRunChunk(head=head)
            for piece in iter_chunks(bundle.data):
                yield pb.SubmitRunChunk(data=piece)

        return int(self._stub.SubmitRun(chunks()).run_id)

    def runs(self, run_id: int = 0) -> list[pb.RunInfo]:
        return list(self._stub.ListRuns(pb.ListRunsRequest(run_id=run_id)).runs)

    def logs(self, run_id: int, *, follow: bool, after_seq: int = 0) -> Iterator[pb.LogLine]:
        yield from self._stub.StreamLogs(
            pb.StreamLogsRequest(run_id=run_id, follow=follow, after_seq=after_seq)
        )

    def stop(self, run_id: int) -> str:
        return str(self._stub.StopRun(pb.StopRunRequest(run_id=run_id)).status)

    def add_node(self, certificate_pem: bytes, *, renew: bool = False) -> pb.NodeInfo:
        return self._stub.AddNode(pb.AddNodeRequest(certificate_pem=certificate_pem, renew=renew))

    def remove_node(self, name: str) -> None:
        self._stub.RemoveNode(pb.RemoveNodeRequest(name=name))

    def artifacts(self, run_id: int) -> list[pb.ArtifactInfo]:
        return list(self._stub.ListArtifacts(pb.ListArtifactsRequest(run_id=run_id)).artifacts)

    def artifact(self, run_id: int, name: str) -> bytes:
        request = pb.GetArtifactRequest(run_id=run_id, name=name)
        return b"".join(chunk.data for chunk in self._stub.GetArtifact(request))

    def nodes(self) -> list[pb.NodeInfo]:
        return list(self._stub.ListNodes(pb.ListNodesRequest()).nodes)

    def audit_lines(
        self, *, run_id: str = "", actions: Iterable[str] = (), since: str = ""
    ) -> Iterator[str]:
        """The SuperLink's audit entries (auditor role), as their canonical lines."""
        request = pb.ListAuditRequest(run_id=run_id, actions=list(actions), since=since)
        for line in self._stub.ListAudit(request):
            yield line.line
