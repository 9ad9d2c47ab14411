"""The one-command demo: a real federation of three hospitals on this machine.

``make demo`` runs this script. It creates a throwaway federation CA, a SuperLink on
SQLite and three hospital SuperNodes — separate processes talking mutual TLS over
127.0.0.1, every node request signed with the site's Ed25519 key — then submits the
hospital example with SecAgg+ and central DP as a data scientist (each hospital's
policy requires both and caps epsilon in its own budget ledger), streams the run's
progress, verifies the audit logs, and shuts everything down. Every file it makes
(certificates, keys, databases, logs) stays in one directory inside the checkout,
printed at the end. Processes are stopped even on Ctrl-C or when a step fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from appliance.appconfig import load_app_spec
from appliance.bundle import build_bundle
from appliance.cli import main as greenhouse
from appliance.federation import ControlClient, Federation
from appliance.supernode.limits import network_isolation_available

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / "var" / "demo"
HOSPITALS = ("st-marys", "city-general", "northside")
TIMEOUT_S = 150


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


FLEET, CONTROL = _free_address(), _free_address()


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def cli(*args: str) -> str:
    """Run a ``greenhouse`` command in this process; its output, or fail loudly with its error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = greenhouse(list(args))
    if code != 0:
        raise RuntimeError(f"greenhouse {' '.join(args)}: {err.getvalue().strip()}")
    return out.getvalue()


class Processes:
    """Every process the demo starts, stopped together."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (WORKDIR / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=WORKDIR,
            start_new_session=True,
        )
        self.running.append((name, process))
        return process

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


def make_pki() -> None:
    step("creating a throwaway federation CA and certificates (keys never leave their site dir)")
    ca = WORKDIR / "ca"
    cli("ca", "init", "--dir", str(ca), "--name", "Greenhouse Demo Federation", "--no-passphrase")
    cli("ca", "issue-server", "--dir", str(ca), "--host", "localhost", "--ip", "127.0.0.1")
    people = [(h, "node", WORKDIR / "sites" / h) for h in HOSPITALS]
    people += [("admin", "federation-admin", WORKDIR / "users" / "admin")]
    people += [("dana", "data-scientist", WORKDIR / "users" / "dana")]
    people += [("audrey", "auditor", WORKDIR / "users" / "audrey")]
    for name, role, directory in people:
        cli("certs", "request", "--role", role, "--name", name, "--out", str(directory))
        cli("ca", "sign", str(directory / f"{name}.csr"), "--dir", str(ca), "--role", role)
    cli("ca", "crl", "--dir", str(ca))


SITE_POLICY = """\
# {hospital}'s site policy: what may run here and what may leave.
[apps]
allow = ["sha256:{bundle}"]            # the hospital app, reviewed by this site

[privacy]
require_secure_aggregation = true      # train only inside SecAgg+ rounds...
min_secagg_cohort = 3                  # ...with at least 3 hospitals
require_dp = "central"                 # only runs that declare central DP, and...
clip_norm = 1.0                        # ...updates leave clipped to at most this norm
max_epsilon_per_run = 30               # site-level epsilon caps, kept in budget.db
max_epsilon_total = 100

[egress]
allowed_metric_keys = ["num-examples", "train-loss", "loss", "accuracy"]
allow_config_strings = false           # no free-form text leaves the site
allow_query = false

[execution]
memory_mb = 2048
wall_seconds = 120
# "none": the ClientApp gets its own empty network namespace (where the kernel allows
# unprivileged user namespaces; elsewhere see docs/site-policy.md).
network = "{network}"
"""


def write_site_policies(bundle_sha256: str) -> None:
    step(
        "each hospital writes its site.toml: allowlist the app, require SecAgg+ (>= 3 sites) "
        "and central DP, cap epsilon"
    )
    network = "none" if network_isolation_available() else "allowed"
    for hospital in HOSPITALS:
        path = WORKDIR / "sites" / hospital / "site.toml"
        path.write_text(
            SITE_POLICY.format(hospital=hospital, bundle=bundle_sha256, network=network)
        )
        path.chmod(0o600)
        cli("policy", "check", str(path))


def user(name: str) -> Federation:
    directory = WORKDIR / "users" / name
    return Federation(
        name="demo",
        address=CONTROL,
        ca_certificate=WORKDIR / "ca" / "ca.pem",
        certificate=directory / f"{name}.pem",
        key=directory / f"{name}.key",
    )


def wait_until(predicate: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start_federation(processes: Processes) -> None:
    ca = WORKDIR / "ca"
    step("starting the SuperLink (SQLite state, mTLS on 127.0.0.1)")
    processes.start(
        "superlink",
        "superlink",
        "--ca",
        str(ca / "ca.pem"),
        "--cert",
        str(ca / "server" / "server.pem"),
        "--key",
        str(ca / "server" / "server.key"),
        "--crl",
        str(ca / "crl.pem"),
        "--data-dir",
        str(WORKDIR / "superlink"),
        "--fleet-address",
        FLEET,
        "--control-address",
        CONTROL,
        "--audit-interval",  # sign tree heads often, so the hospitals witness the run itself
        "2",
    )
    log = WORKDIR / "logs" / "superlink.log"
    wait_until(lambda: log.exists() and "superlink ready" in log.read_text(), "the SuperLink")
    step("enrolling the hospitals by certificate (a valid certificate alone does not admit a site)")
    with ControlClient(user("admin")) as admin:
        for hospital in HOSPITALS:
            admin.add_node((WORKDIR / "sites" / hospital / f"{hospital}.pem").read_bytes())
    step(f"starting {len(HOSPITALS)} hospital SuperNodes (each dials out; no inbound port)")
    for i, hospital in enumerate(HOSPITALS):
        site = WORKDIR / "sites" / hospital
        processes.start(
            hospital,
            "supernode",
            "--superlink",
            FLEET,
            "--ca",
            str(ca / "ca.pem"),
            "--cert",
            str(site / f"{hospital}.pem"),
            "--key",
            str(site / f"{hospital}.key"),
            "--signing-key",
            str(site / f"{hospital}-signing.key"),
            "--crl",
            str(ca / "crl.pem"),
            "--policy",
            str(site / "site.toml"),
            "--data-dir",
            str(WORKDIR / "nodes" / hospital),
            "--node-config",
            f"partition-id={i} num-partitions={len(HOSPITALS)}",
        )
    with ControlClient(user("admin")) as admin:
        wait_until(lambda: all(n.online for n in admin.nodes()), "the hospitals to connect")


def run_hospital_app() -> str:
    app = ROOT / "examples" / "hospital"
    spec = load_app_spec(app)
    bundle = build_bundle(app)
    step(
        f"submitting the hospital app with SecAgg+ and central DP as data scientist 'dana' "
        f"({bundle.sha256[:12]})"
    )
    output: list[str] = []
    # z = 0.7: with three hospitals the noise on the mean is large; at z = 1 about one
    # run in twenty ends on a noisy last round (site-level epsilon: 26.3 vs 16.5).
    config = {
        **spec.config,
        "secure-aggregation": True,
        "dp-mode": "central",
        "dp-noise-multiplier": 0.7,
    }
    with ControlClient(user("dana")) as client:
        run_id = client.submit(bundle, config, app_name=spec.name, app_version=spec.version)
        for line in _follow(client, run_id):
            output.append(line)
            print(f"    {line}", flush=True)
        (info,) = client.runs(run_id)
    if info.status != "finished":
        raise RuntimeError(f"run {run_id} {info.status}: {info.reason}")
    return "\n".join(output)


def _follow(client: ControlClient, run_id: int) -> Iterator[str]:
    """The ServerApp's own output (one row per round as it completes), the sites'
    receipts, the privacy plan, and errors."""
    for line in client.logs(run_id, follow=True):
        system = line.stream == "system" and (
            "the run" in line.text or line.text.startswith("privacy plan")
        )
        if line.stream == "stdout" or system or "Error" in line.text:
            yield line.text


def show_budgets() -> None:
    step("each hospital's privacy-budget ledger (what the run cost, by the site's own count)")
    for hospital in HOSPITALS:
        print(f"    {hospital}:", flush=True)
        _indent(cli("budget", "show", "--data-dir", str(WORKDIR / "nodes" / hospital)))


def show_live_audit() -> None:
    step("the compliance officer 'audrey' reads the SuperLink's audit log over the Control API")
    with ControlClient(user("audrey")) as auditor:
        actions = Counter(json.loads(line)["action"] for line in auditor.audit_lines())
    print("    " + ", ".join(f"{action} x{n}" for action, n in sorted(actions.items())), flush=True)


def verify_audit_logs() -> None:
    """Export, verify and reconcile the SuperLink's log and one hospital's (processes stopped)."""
    exports = WORKDIR / "audit-exports"
    link_key = str(WORKDIR / "superlink" / "audit.vkey")
    witnesses = [
        arg
        for h in HOSPITALS
        for arg in ("--witness-key", str(WORKDIR / "nodes" / h / "audit" / "witness.vkey"))
    ]
    site = HOSPITALS[0]
    site_dir = WORKDIR / "nodes" / site / "audit"
    step("exporting the SuperLink's audit log and verifying it offline (hospitals as witnesses)")
    cli("audit", "export", "--file", str(WORKDIR / "superlink" / "state.db"),
        "--out", str(exports / "superlink"))  # fmt: skip
    _indent(cli("audit", "verify", str(exports / "superlink"), "--key", link_key, *witnesses))
    step(f"exporting {site}'s own log (what arrived, what left) and verifying it")
    cli("audit", "export", "--file", str(site_dir / "site-audit.db"),
        "--out", str(exports / site))  # fmt: skip
    site_key = str(site_dir / "site-audit.vkey")
    _indent(cli("audit", "verify", str(exports / site), "--key", site_key))
    step(f"reconciling {site}'s log with the SuperLink's: every reply that left arrived, same hash")
    _indent(cli("audit", "reconcile", str(exports / site), str(exports / "superlink"),
                "--site-key", site_key, "--link-key", link_key))  # fmt: skip


def _indent(text: str) -> None:
    for line in text.strip().splitlines():
        print(f"    {line}", flush=True)


def main() -> int:
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    (WORKDIR / "logs").mkdir(parents=True)
    processes = Processes()

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        make_pki()
        write_site_policies(build_bundle(ROOT / "examples" / "hospital").sha256)
        start_federation(processes)
        output = run_hospital_app()
        show_live_audit()
        show_budgets()
        step("stopping every process (each signs a last audit tree head)")
        processes.stop_all()
        verify_audit_logs()
        accuracy = re.search(r"federated model: test accuracy (\S+)", output)
        spent = re.search(r"privacy spent: (.*)", output)
        step(
            f"done in {time.monotonic() - started:.1f} s; federated test accuracy "
            f"{accuracy.group(1) if accuracy else '?'}; privacy spent "
            f"{spent.group(1) if spent else '?'}"
        )
        return 0
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the logs are on disk
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if any(process.poll() is None for _, process in processes.running):
            step("stopping every process")
            processes.stop_all()
        print(
            f"files (certificates, databases, logs, audit exports): {WORKDIR.relative_to(ROOT)}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
