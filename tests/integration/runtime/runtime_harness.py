"""A real federation on 127.0.0.1: CA, SuperLink and SuperNode processes, users' CLI.

The PKI is made once per module with the ``greenhouse`` CLI itself. Each test gets
a fresh :class:`Federation` (its own data dirs and ports); every process it starts
is killed at teardown, even when the test fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.cli import main as cli_main
from appliance.federation import ControlClient
from appliance.federation import Federation as FederationConfig
from certs import load_signing_key

NODES = ("n1", "n2", "n3", "n4", "n5")
USERS = {
    "admin": "federation-admin",
    "alice": "data-scientist",
    "bob": "data-scientist",
    "audrey": "auditor",
}
APPS = Path(__file__).parent / "apps"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _cli(*args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    assert code == 0, f"greenhouse {' '.join(args)} failed: {err.getvalue()}"


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def cert(self, name: str) -> Path:
        return self.root / name / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / name / f"{name}.key"

    def signing_key(self, name: str) -> Path:
        return self.root / name / f"{name}-signing.key"

    def signing_public_key(self, name: str) -> bytes:
        """The raw Ed25519 key a receipt or reply of ``name`` verifies with."""
        return load_signing_key(self.signing_key(name)).public_key().public_bytes_raw()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = root / "ca"
    _cli("ca", "init", "--dir", str(ca), "--name", "Test Federation", "--no-passphrase")
    _cli("ca", "issue-server", "--dir", str(ca), "--host", "localhost", "--ip", "127.0.0.1")
    for name, role in [*((n, "node") for n in (*NODES, "stranger")), *USERS.items()]:
        _cli("certs", "request", "--role", role, "--name", name, "--out", str(root / name))
        _cli("ca", "sign", str(root / name / f"{name}.csr"), "--dir", str(ca), "--role", role)
    _cli("ca", "crl", "--dir", str(ca))
    return Pki(root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Federation:
    """SuperLink + SuperNodes as real processes, and users talking to them."""

    pki: Pki
    root: Path
    database: str | None = None
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    superlink: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, extra: tuple[str, ...] = ()) -> None:
        args = [
            "superlink",
            "--ca",
            str(self.pki.ca),
            "--cert",
            str(self.pki.ca_dir / "server" / "server.pem"),
            "--key",
            str(self.pki.ca_dir / "server" / "server.key"),
            "--crl",
            str(self.pki.ca_dir / "crl.pem"),
            "--data-dir",
            str(self.root / "superlink"),
            "--fleet-address",
            f"127.0.0.1:{self.fleet_port}",
            "--control-address",
            f"127.0.0.1:{self.control_port}",
            "--node-grace",
            "1.0",
            "--keepalive",
            "1.0",
        ]
        if self.database:
            args += ["--database", self.database]
        args += extra
        before = self.log("superlink").count("superlink ready")
        self.superlink = self._spawn("superlink", *args)
        wait_for(
            lambda: (
                self.log("superlink").count("superlink ready") > before
                or self.superlink.poll() is not None
            ),
            30,
            "the SuperLink to start",
        )
        assert self.superlink.poll() is None, self.log("superlink")

    def kill_superlink(self) -> None:
        assert self.superlink is not None
        os.killpg(self.superlink.pid, signal.SIGKILL)
        self.superlink.wait()

    def start_node(
        self,
        name: str,
        partition_id: int,
        num_partitions: int,
        policy: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        args = [
            "supernode", "--superlink", f"127.0.0.1:{self.fleet_port}",
            "--ca", str(self.pki.ca), "--cert", str(self.pki.cert(name)),
            "--key", str(self.pki.key(name)), "--signing-key", str(self.pki.signing_key(name)),
            "--crl", str(self.pki.ca_dir / "crl.pem"),
            "--data-dir", str(self.root / f"node-{name}"),
            "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
        ]  # fmt: skip
        if policy is not None:
            args += ["--policy", str(policy)]
        self.nodes[name] = self._spawn(f"node-{name}", *args, *extra)

    def kill_node(self, name: str) -> None:
        process = self.nodes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def terminate(self, name: str, timeout_s: float = 20) -> int:
        """SIGTERM the SuperLink (``"superlink"``) or a node, as an operator would; exit code."""
        process = self.superlink if name == "superlink" else self.nodes.pop(name)
        assert process is not None
        os.killpg(process.pid, signal.SIGTERM)
        return process.wait(timeout=timeout_s)

    def config(self, user: str) -> FederationConfig:
        return FederationConfig(
            name="test",
            address=f"127.0.0.1:{self.control_port}",
            ca_certificate=self.pki.ca,
            certificate=self.pki.cert(user),
            key=self.pki.key(user),
        )

    def client(self, user: str) -> ControlClient:
        return ControlClient(self.config(user))

    def write_user_config(self, user: str) -> Path:
        directory = self.root / f"config-{user}"
        directory.mkdir(exist_ok=True)
        (directory / "federations.toml").write_text(
            "[federations.test]\n"
            f'address = "127.0.0.1:{self.control_port}"\n'
            f'ca = "{self.pki.ca}"\ncert = "{self.pki.cert(user)}"\nkey = "{self.pki.key(user)}"\n'
        )
        return directory

    def cli(self, user: str, *args: str) -> tuple[int, str, str]:
        """Run ``greenhouse ARGS`` in this process as ``user``."""
        out, err = io.StringIO(), io.StringIO()
        previous = os.environ.get("GREENHOUSE_CONFIG_DIR")
        os.environ["GREENHOUSE_CONFIG_DIR"] = str(self.write_user_config(user))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main(list(args))
        finally:
            if previous is None:
                os.environ.pop("GREENHOUSE_CONFIG_DIR", None)
            else:
                os.environ["GREENHOUSE_CONFIG_DIR"] = previous
        return code, out.getvalue(), err.getvalue()

    def enrol(self, *names: str) -> None:
        with self.client("admin") as admin:
            for name in names:
                admin.add_node(self.pki.cert(name).read_bytes())

    def online(self) -> set[str]:
        with self.client("admin") as admin:
            return {n.name for n in admin.nodes() if n.online}

    def wait_online(self, *names: str, timeout_s: float = 30) -> None:
        wait_for(lambda: set(names) <= self.online(), timeout_s, f"nodes {names} online")

    def run_status(self, user: str, run_id: int) -> tuple[str, str]:
        with self.client(user) as client:
            (info,) = client.runs(run_id)
        return info.status, info.reason

    def wait_run(self, user: str, run_id: int, timeout_s: float = 60) -> tuple[str, str]:
        terminal = {"finished", "failed", "stopped"}
        wait_for(
            lambda: self.run_status(user, run_id)[0] in terminal, timeout_s, f"run {run_id} to end"
        )
        return self.run_status(user, run_id)

    def close(self) -> None:
        for process in [*self.nodes.values(), self.superlink]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def federation(pki: Pki, tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(pki, tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def start(fed: Federation, nodes: int, policy: Path | None = None) -> None:
    """SuperLink up, ``nodes`` nodes enrolled, started (with ``policy``) and online."""
    fed.start_superlink()
    names = NODES[:nodes]
    fed.enrol(*names)
    for i, name in enumerate(names):
        fed.start_node(name, i, nodes, policy)
    fed.wait_online(*names)


def submitted_run(cli_output: str) -> int:
    """The run id ``greenhouse run`` printed ("run N submitted ...")."""
    match = re.search(r"run (\d+) submitted", cli_output)
    assert match, cli_output
    return int(match.group(1))
