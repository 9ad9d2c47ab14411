"""The machinery of ``examples/demo.py``: a real federation on this machine, then gone.

For one :class:`Example` (an app, its sites and their ``site.toml``, the run config
the data scientist submits, how to read the result) it creates a throwaway
federation CA with a certificate and signing key per site and per user, starts a
SuperLink on SQLite and one SuperNode per site -- separate processes talking mutual
TLS over 127.0.0.1, every node request signed with the site's Ed25519 key -- submits
the app as data scientist 'dana', streams the run's progress, shows each site's
privacy-budget ledger, lets auditor 'audrey' read the SuperLink's audit log, stops
every process (also on Ctrl-C, SIGTERM or a failed step) and exports, verifies and
reconciles the audit logs offline. Every file stays in the example's directory
inside the checkout, printed at the end.

What it leaves to the example: the policy's content, the run config and the
figures worth printing. It checks nothing about the app's results itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from appliance.appconfig import load_app_spec
from appliance.bundle import build_bundle
from appliance.cli import main as greenhouse
from appliance.federation import ControlClient, Federation
from appliance.supernode.limits import network_isolation_available

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """What one demo runs; everything else is the same for every example."""

    #: The app's directory name under ``examples/`` ("hospital"), as in "the hospital app".
    name: str
    #: One site in words ("hospital"); messages add an "s" for the plural.
    site_noun: str
    #: The sites' names; site ``i`` gets ``partition-id = i``.
    sites: tuple[str, ...]
    #: The ``site.toml`` every site writes; ``{site}``, ``{bundle}`` (the app's
    #: SHA-256) and ``{network}`` ("none" where the kernel can isolate) are filled in.
    site_policy: str
    #: What the policies require, in words, shown when they are written.
    policy_summary: str
    #: Run config on top of the app's defaults (``pyproject.toml``).
    run_config: Mapping[str, bool | int | float | str]
    #: How the run is submitted, in words ("with SecAgg+ and central DP").
    run_summary: str
    #: The figures of the final line, read from the ServerApp's output.
    summary: Callable[[str], str]
    #: Where every file goes (git-ignored); wiped at the start.
    workdir: Path
    #: Modules the app needs in this interpreter (the SuperNodes' ClientApps use it),
    #: and how to install them.
    needs: tuple[str, ...] = ()
    install_hint: str = ""
    #: The run must finish within this many seconds, or the demo stops it and fails.
    timeout_s: float = 150

    @property
    def app(self) -> Path:
        return ROOT / "examples" / self.name


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _indent(text: str) -> None:
    for line in text.strip().splitlines():
        print(f"    {line}", flush=True)


def cli(*args: str) -> str:
    """Run a ``greenhouse`` command in this process; its output, or fail loudly with its error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = greenhouse(list(args))
    if code != 0:
        raise RuntimeError(f"greenhouse {' '.join(args)}: {err.getvalue().strip()}")
    return out.getvalue()


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class Processes:
    """Every process the demo starts (``greenhouse`` commands), stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        self.running.append((name, process))
        return process

    def any_running(self) -> bool:
        return any(process.poll() is None for _, process in self.running)

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class Demo:
    """One demo run of ``example``: its CA, processes, run and audit checks."""

    def __init__(self, example: Example) -> None:
        self.example = example
        self.workdir = example.workdir
        self.sites = example.sites
        self.plural = f"{example.site_noun}s"
        self.fleet, self.control = _free_address(), _free_address()
        self.processes = Processes(self.workdir)

    def make_pki(self) -> None:
        step(
            "creating a throwaway federation CA and certificates (keys never leave their site dir)"
        )
        ca, work = self.workdir / "ca", self.workdir
        cli("ca", "init", "--dir", str(ca), "--name", "Greenhouse Demo Federation",
            "--no-passphrase")  # fmt: skip
        cli("ca", "issue-server", "--dir", str(ca), "--host", "localhost", "--ip", "127.0.0.1")
        people = [(site, "node", work / "sites" / site) for site in self.sites]
        people += [("admin", "federation-admin", work / "users" / "admin")]
        people += [("dana", "data-scientist", work / "users" / "dana")]
        people += [("audrey", "auditor", work / "users" / "audrey")]
        for name, role, directory in people:
            cli("certs", "request", "--role", role, "--name", name, "--out", str(directory))
            cli("ca", "sign", str(directory / f"{name}.csr"), "--dir", str(ca), "--role", role)
        cli("ca", "crl", "--dir", str(ca))

    def write_site_policies(self, bundle_sha256: str) -> None:
        step(f"each {self.example.site_noun} writes its site.toml: {self.example.policy_summary}")
        network = "none" if network_isolation_available() else "allowed"
        for site in self.sites:
            path = self.workdir / "sites" / site / "site.toml"
            text = self.example.site_policy.format(site=site, bundle=bundle_sha256, network=network)
            path.write_text(text)
            path.chmod(0o600)
            cli("policy", "check", str(path))

    def user(self, name: str) -> Federation:
        directory = self.workdir / "users" / name
        return Federation(
            name="demo",
            address=self.control,
            ca_certificate=self.workdir / "ca" / "ca.pem",
            certificate=directory / f"{name}.pem",
            key=directory / f"{name}.key",
        )

    def _tls(self, certificate: Path, key: Path) -> list[str]:
        ca = self.workdir / "ca"
        return ["--ca", str(ca / "ca.pem"), "--cert", str(certificate), "--key", str(key),
                "--crl", str(ca / "crl.pem")]  # fmt: skip

    def start_federation(self) -> None:
        server = self.workdir / "ca" / "server"
        step("starting the SuperLink (SQLite state, mTLS on 127.0.0.1)")
        self.processes.start(
            "superlink",
            "superlink",
            *self._tls(server / "server.pem", server / "server.key"),
            "--data-dir",
            str(self.workdir / "superlink"),
            "--fleet-address",
            self.fleet,
            "--control-address",
            self.control,
            "--audit-interval",  # sign tree heads often, so the sites witness the run itself
            "2",
        )
        log = self.workdir / "logs" / "superlink.log"
        wait_until(lambda: log.exists() and "superlink ready" in log.read_text(), "the SuperLink")
        step(
            f"enrolling the {self.plural} by certificate "
            "(a valid certificate alone does not admit a site)"
        )
        with ControlClient(self.user("admin")) as admin:
            for site in self.sites:
                admin.add_node((self.workdir / "sites" / site / f"{site}.pem").read_bytes())
        step(
            f"starting {len(self.sites)} {self.example.site_noun} SuperNodes "
            "(each dials out; no inbound port)"
        )
        for i, site in enumerate(self.sites):
            directory = self.workdir / "sites" / site
            self.processes.start(
                site,
                "supernode",
                "--superlink",
                self.fleet,
                *self._tls(directory / f"{site}.pem", directory / f"{site}.key"),
                "--signing-key",
                str(directory / f"{site}-signing.key"),
                "--policy",
                str(directory / "site.toml"),
                "--data-dir",
                str(self.workdir / "nodes" / site),
                "--node-config",
                f"partition-id={i} num-partitions={len(self.sites)}",
            )
        with ControlClient(self.user("admin")) as admin:
            wait_until(
                lambda: all(n.online for n in admin.nodes()), f"the {self.plural} to connect"
            )

    def run_app(self) -> str:
        """Submit the app as 'dana' and print its progress; the ServerApp's output."""
        spec = load_app_spec(self.example.app)
        bundle = build_bundle(self.example.app)
        step(
            f"submitting the {self.example.name} app {self.example.run_summary} as data "
            f"scientist 'dana' ({bundle.sha256[:12]})"
        )
        output: list[str] = []
        config = {**spec.config, **self.example.run_config}
        with ControlClient(self.user("dana")) as client:
            run_id = client.submit(bundle, config, app_name=spec.name, app_version=spec.version)
            for line in _follow(client, run_id, self.example.timeout_s):
                output.append(line)
                print(f"    {line}", flush=True)
            (info,) = client.runs(run_id)
        if info.status != "finished":
            raise RuntimeError(f"run {run_id} {info.status}: {info.reason}")
        return "\n".join(output)

    def show_live_audit(self) -> None:
        step("the compliance officer 'audrey' reads the SuperLink's audit log over the Control API")
        with ControlClient(self.user("audrey")) as auditor:
            actions = Counter(json.loads(line)["action"] for line in auditor.audit_lines())
        _indent(", ".join(f"{action} x{n}" for action, n in sorted(actions.items())))

    def show_budgets(self) -> None:
        step(
            f"each {self.example.site_noun}'s privacy-budget ledger "
            "(what the run cost, by the site's own count)"
        )
        for site in self.sites:
            print(f"    {site}:", flush=True)
            _indent(cli("budget", "show", "--data-dir", str(self.workdir / "nodes" / site)))

    def verify_audit_logs(self) -> None:
        """Export, verify and reconcile the SuperLink's log and one site's (processes stopped)."""
        work = self.workdir
        exports = work / "audit-exports"
        link_key = str(work / "superlink" / "audit.vkey")
        witnesses = [
            arg
            for s in self.sites
            for arg in ("--witness-key", str(work / "nodes" / s / "audit" / "witness.vkey"))
        ]
        site = self.sites[0]
        site_dir = work / "nodes" / site / "audit"
        step(
            "exporting the SuperLink's audit log and verifying it offline "
            f"({self.plural} as witnesses)"
        )
        cli("audit", "export", "--file", str(work / "superlink" / "state.db"),
            "--out", str(exports / "superlink"))  # fmt: skip
        _indent(cli("audit", "verify", str(exports / "superlink"), "--key", link_key, *witnesses))
        step(f"exporting {site}'s own log (what arrived, what left) and verifying it")
        cli("audit", "export", "--file", str(site_dir / "site-audit.db"),
            "--out", str(exports / site))  # fmt: skip
        site_key = str(site_dir / "site-audit.vkey")
        _indent(cli("audit", "verify", str(exports / site), "--key", site_key))
        step(
            f"reconciling {site}'s log with the SuperLink's: "
            "every reply that left arrived, same hash"
        )
        _indent(cli("audit", "reconcile", str(exports / site), str(exports / "superlink"),
                    "--site-key", site_key, "--link-key", link_key))  # fmt: skip

    def run(self) -> str:
        """Every step in order; the final figures. Raises on the first failed step."""
        self.make_pki()
        self.write_site_policies(build_bundle(self.example.app).sha256)
        self.start_federation()
        output = self.run_app()
        self.show_live_audit()
        self.show_budgets()
        step("stopping every process (each signs a last audit tree head)")
        self.processes.stop_all()
        self.verify_audit_logs()
        return self.example.summary(output)


def _follow(client: ControlClient, run_id: int, timeout_s: float) -> Iterator[str]:
    """The ServerApp's own output (one row per round as it completes), the sites'
    receipts, the privacy plan, and errors; for at most ``timeout_s`` seconds.

    The log stream is read by a helper thread, so the wait stays bounded and Ctrl-C
    reaches the main thread at once.
    """
    lines: queue.Queue[str | BaseException | None] = queue.Queue()

    def pump() -> None:
        try:
            for line in client.logs(run_id, follow=True):
                system = line.stream == "system" and (
                    "the run" in line.text or line.text.startswith("privacy plan")
                )
                if line.stream == "stdout" or system or "Error" in line.text:
                    lines.put(line.text)
            lines.put(None)
        except BaseException as exc:  # handed to the main thread
            lines.put(exc)

    threading.Thread(target=pump, name=f"logs-{run_id}", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            item = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            with contextlib.suppress(Exception):  # the run is failed either way
                client.stop(run_id)
            raise RuntimeError(f"run {run_id} did not finish within {timeout_s:g} s") from None
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def run_demo(example: Example) -> int:
    """Run the demo of ``example``; the exit code (0, 1 on a failed step, 130 interrupted)."""
    missing = [name for name in example.needs if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"demo failed: the {example.name} example needs {', '.join(missing)} "
            f"({example.install_hint})",
            file=sys.stderr,
        )
        return 1
    if example.workdir.exists():
        shutil.rmtree(example.workdir)
    (example.workdir / "logs").mkdir(parents=True)
    demo = Demo(example)

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        summary = demo.run()
        step(f"done in {time.monotonic() - started:.1f} s; {summary}")
        return 0
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the logs are on disk
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if demo.processes.any_running():
            step("stopping every process")
            demo.processes.stop_all()
        print(
            "files (certificates, databases, logs, audit exports): "
            f"{example.workdir.relative_to(ROOT)}",
            flush=True,
        )
