"""Round latency of the deployment runtime, against raw gRPC transfer of the same bytes.

For each configuration (SuperNodes x float32 values; by default 3 and 10 nodes x 1M and
10M values), in one run:

* the deployment runtime, for real: a throwaway PKI made with the ``greenhouse`` CLI
  (in process), a SuperLink process and N SuperNode processes on 127.0.0.1 over mTLS,
  the nodes enrolled through the Control API, and the ``roundbench`` app
  (``benchmarks/apps/roundbench``) submitted as a data scientist would. Its ServerApp
  runs FedAvg (``fraction_evaluate=0``, every node sampled and required) for W warm-up
  + R measured rounds and prints, per round, the wall seconds between consecutive
  calls of FedAvg's ``evaluate_fn`` (one whole round) and, at the end, its own peak
  RSS; the benchmark reads those lines through the Control API (``StreamLogs``, the
  way ``greenhouse run`` follows a run), reads the SuperLink's and the SuperNodes'
  peak RSS (``VmHWM``) from ``/proc``, and tears everything down;
* a raw gRPC baseline: a minimal server process (generic handlers, no interceptors)
  and N client threads, each on its own channel, each downloading then uploading the
  model's bytes in 1 MiB chunks (N x model bytes each way per round, the traffic of
  a FedAvg round), over mutual TLS with the same certificates, and over plaintext.

It prints a table (median seconds per measured round, raw mTLS transfer seconds, their
ratio, when in the round the model was pushed and the replies came back, peak RSS of the
SuperLink, the SuperNodes and the ServerApp, the blob store's size after the run), the
CPU seconds per round spent by each kind of process (sampled from ``/proc``; less moved
than wall time by other work on the machine), and checks the aims of issue 4:
10 SuperNodes x 1M values at most 0.5 s per round; 10M values within 2x of the raw
transfer time; the SuperLink's memory not growing with nodes x model size (the slope of
its RSS growth against nodes x model bytes across the configurations: 1 would mean it
holds every reply, the aim is <= 0.1).

Everything is bounded: an overall deadline (``--timeout``), a per-configuration deadline
(``--run-timeout``); every process started is ended at the end, whatever happens
(SIGTERM and Ctrl-C included). ``--profile DIR`` runs the SuperLink and every SuperNode
under ``py-spy record --subprocesses`` (``pip install py-spy``), ServerApp and
ClientApps included.

    .venv/bin/python benchmarks/round.py --quick      # 3 nodes, 1M values, 1 + 2 rounds
    .venv/bin/python benchmarks/round.py              # the full matrix
    .venv/bin/python benchmarks/round.py --nodes 10 --values 1000000 --rounds 5
    .venv/bin/python benchmarks/round.py --quick --profile prof/   # py-spy flame graphs
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Sibling scripts here are named like the packages they measure (audit.py, dp.py,
# secagg.py): take this folder off the import path, put the repository root on it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import grpc  # noqa: E402

from appliance.appconfig import load_app_spec, merge_run_config  # noqa: E402
from appliance.bundle import build_bundle  # noqa: E402
from appliance.cli import main as cli_main  # noqa: E402
from appliance.federation import ControlClient  # noqa: E402
from appliance.federation import Federation as FederationConfig  # noqa: E402

APP = _HERE / "apps" / "roundbench"
CHUNK = 1024 * 1024
ADMIN, SCIENTIST = "bench-admin", "bench-alice"
LINE_PREFIX = "roundbench "
AIM_1M_SECONDS = 0.5
AIM_10M_RATIO = 2.0
AIM_RSS_SLOPE = 0.1
MB = 1024 * 1024


class BenchError(RuntimeError):
    """A configuration could not be measured."""


# -- time limits -----------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise BenchError(f"out of time while {what}")

    def sooner(self, seconds: float) -> Deadline:
        return Deadline(min(seconds, self.remaining()))


def wait_until(predicate: Callable[[], object], deadline: Deadline, what: str) -> object:
    while True:
        value = predicate()
        if value:
            return value
        deadline.check(f"waiting for {what}")
        time.sleep(0.05)


# -- processes -------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every visible process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (any depth, any session) -> its start time."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _start) in table.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = table[child][1]
        todo.extend(children.get(child, []))
    return found


def vm_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` field in kB (e.g. VmHWM, VmRSS); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


#: Which process a command line belongs to (checked in order).
KINDS = (
    ("appliance.superlink.serverapp_process", "serverapp"),
    ("appliance.supernode.clientapp_entry", "clientapps"),
    ("appliance.cli supernode", "supernodes"),
    ("appliance.cli superlink", "superlink"),
)
_TICK = os.sysconf("SC_CLK_TCK")


def _kind(pid: int) -> str | None:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return next((kind for marker, kind in KINDS if marker in command), None)


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


class CpuSampler:
    """Samples the CPU time of every runtime process below this one, every ``interval_s``.

    CPU seconds, unlike wall seconds, are little moved by other work sharing the
    machine, and they say which process the time goes to. A process's CPU time at an
    instant between two samples is interpolated linearly.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval = interval_s
        self._series: dict[int, tuple[str, list[float], list[float]]] = {}  # kind, t, cpu
        self._kinds: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in descendants(me):
                if pid not in self._kinds:
                    self._kinds[pid] = _kind(pid)
                kind = self._kinds[pid]
                seconds = _cpu_seconds(pid) if kind else None
                if kind and seconds is not None:
                    _, times, cpu = self._series.setdefault(pid, (kind, [], []))
                    times.append(time.monotonic())
                    cpu.append(seconds)
            self._stop.wait(self._interval)

    @staticmethod
    def _interpolate(times: list[float], cpu: list[float], when: float) -> float:
        after = bisect.bisect_left(times, when)
        if after == 0:
            return 0.0  # first seen later (sampling starts before the run): not born yet
        if after == len(times):
            return cpu[-1]
        t0, t1 = times[after - 1], times[after]
        return cpu[after - 1] + (cpu[after] - cpu[after - 1]) * (when - t0) / (t1 - t0)

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per kind of process spent between two monotonic instants."""
        spent: dict[str, float] = {kind: 0.0 for _, kind in KINDS}
        for kind, times, cpu in self._series.values():
            spent[kind] += self._interpolate(times, cpu, end) - self._interpolate(times, cpu, start)
        return spent


class _Termination:
    """SIGTERM/SIGINT end the benchmark by unwinding (so every ``finally`` runs), but not
    in the middle of :meth:`Processes.close`: there the request waits until it is done."""

    def __init__(self) -> None:
        self.shielded = 0
        self.pending: int | None = None

    def handle(self, signum: int, _frame: object) -> None:
        if self.shielded:
            self.pending = signum
            return
        sys.exit(128 + signum)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if not self.shielded and self.pending is not None:
            signum, self.pending = self.pending, None
            sys.exit(128 + signum)


TERMINATION = _Termination()


class Processes:
    """Processes this benchmark started; :meth:`close` ends each of them, and theirs."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.wrappers: set[int] = set()  # py-spy: end its child, so that it writes its profile

    def spawn(
        self, args: list[str], log: Path, cwd: Path, *, wrapper: bool = False
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        self.popens.append(popen)
        if wrapper:
            self.wrappers.add(popen.pid)
        return popen

    def close(self, grace_s: float = 5.0) -> None:
        with TERMINATION.shield():
            self._close(grace_s)

    def _close(self, grace_s: float) -> None:
        # Children (ServerApp, ClientApps) run in sessions of their own: note them first,
        # so that whatever outlives its parent can still be ended by its pid.
        below: dict[int, str] = {}
        for popen in self.popens:
            if popen.poll() is None:
                below.update(descendants(popen.pid))
        for popen in self.popens:
            if popen.poll() is None and popen.pid not in self.wrappers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGTERM)
        if self.wrappers:
            grace_s = max(grace_s, 30.0)  # py-spy writes its profile after its child exits
        end = time.monotonic() + grace_s
        for popen in self.popens:
            while popen.pid in self.wrappers and popen.poll() is None:
                # A signal can be lost while py-spy has the process stopped: repeat it.
                self._terminate_children(popen.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=min(1.0, max(end - time.monotonic(), 0.1)))
                if time.monotonic() >= end:
                    break
            try:
                popen.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        table = _proc_table()
        for pid, started in below.items():
            if pid in table and table[pid][1] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.popens.clear()
        self.wrappers.clear()

    @staticmethod
    def _terminate_children(pid: int) -> None:
        for child, (parent, _start) in _proc_table().items():
            if parent == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)


# -- PKI -------------------------------------------------------------------------------


def _cli(*args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    if code != 0:
        raise BenchError(f"greenhouse {' '.join(args)} failed: {err.getvalue()}")


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "ca" / "server" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "ca" / "server" / "server.key"

    def cert(self, name: str) -> Path:
        return self.root / name / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / name / f"{name}.key"

    def signing_key(self, name: str) -> Path:
        return self.root / name / f"{name}-signing.key"


def node_name(index: int) -> str:
    return f"site{index:02d}"


def make_pki(root: Path, nodes: int) -> Pki:
    """A CA, a server certificate, ``nodes`` node identities, an admin and a data scientist."""
    ca = root / "ca"
    _cli("ca", "init", "--dir", str(ca), "--name", "Round Bench", "--no-passphrase")
    _cli("ca", "issue-server", "--dir", str(ca), "--host", "localhost", "--ip", "127.0.0.1")
    people = [(node_name(i), "node") for i in range(nodes)]
    people += [(ADMIN, "federation-admin"), (SCIENTIST, "data-scientist")]
    for name, role in people:
        _cli("certs", "request", "--role", role, "--name", name, "--out", str(root / name))
        _cli("ca", "sign", str(root / name / f"{name}.csr"), "--dir", str(ca), "--role", role)
    _cli("ca", "crl", "--dir", str(ca))
    return Pki(root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the deployment runtime ------------------------------------------------------------


@dataclass
class RuntimeResult:
    rounds: list[dict[str, object]] = field(default_factory=list)
    serverapp_rss_kb: int = 0
    superlink_idle_kb: int = 0
    superlink_peak_kb: int = 0
    supernode_peak_kb: int = 0
    blob_bytes: int = 0
    cpu_per_round: dict[str, float] = field(default_factory=dict)
    final: dict[str, object] = field(default_factory=dict)
    failures: list[dict[str, object]] = field(default_factory=list)
    status: str = ""
    reason: str = ""

    def measured(self) -> list[float]:
        return [float(r["seconds"]) for r in self.rounds if not r["warmup"]]  # type: ignore[arg-type]

    def phase(self, name: str) -> float | None:
        values = [float(r[name]) for r in self.rounds if not r["warmup"] and name in r]  # type: ignore[arg-type]
        return statistics.median(values) if values else None


class Federation:
    """One SuperLink and its SuperNodes as real processes in ``root``."""

    def __init__(
        self,
        pki: Pki,
        root: Path,
        procs: Processes,
        profile: Path | None,
        profile_format: str = "flamegraph",
        profile_rate: int = 50,
    ) -> None:
        self.pki = pki
        self.profile_format = profile_format
        self.profile_rate = profile_rate
        self.root = root
        self.procs = procs
        self.profile = profile
        self.fleet_port = free_port()
        self.control_port = free_port()
        self.superlink: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []

    def _command(self, label: str, args: list[str]) -> list[str]:
        command = [sys.executable, "-m", "appliance.cli", *args]
        if self.profile is None:
            return command
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        fmt = self.profile_format
        suffix = {"flamegraph": "svg", "speedscope": "json"}.get(fmt, "txt")
        out = self.profile / f"{label}.{suffix}"
        record = [
            spy,
            "record",
            "--subprocesses",
            "--nonblocking",
            "--rate",
            str(self.profile_rate),
            "--format",
            fmt,
            "-o",
            str(out),
        ]
        return [*record, "--", *command]

    def _python_pid(self, popen: subprocess.Popen[bytes]) -> int:
        """The interpreter's pid (under py-spy it is a child of the popen)."""
        if self.profile is None:
            return popen.pid

        def child() -> int:
            table = _proc_table()
            return next((pid for pid, (ppid, _) in table.items() if ppid == popen.pid), 0)

        return int(wait_until(child, Deadline(10), "py-spy's child"))  # type: ignore[arg-type]

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, deadline: Deadline) -> int:
        args = [
            "superlink",
            "--ca", str(self.pki.ca),
            "--cert", str(self.pki.server_cert),
            "--key", str(self.pki.server_key),
            "--crl", str(self.pki.root / "ca" / "crl.pem"),
            "--data-dir", str(self.root / "superlink"),
            "--fleet-address", f"127.0.0.1:{self.fleet_port}",
            "--control-address", f"127.0.0.1:{self.control_port}",
        ]  # fmt: skip
        self.superlink = self.procs.spawn(
            self._command("superlink", args),
            self.root / "superlink.log",
            self.root,
            wrapper=self.profile is not None,
        )
        popen = self.superlink
        wait_until(
            lambda: "superlink ready" in self.log("superlink") or popen.poll() is not None,
            deadline,
            "the SuperLink to start",
        )
        if popen.poll() is not None:
            raise BenchError("the SuperLink did not start:\n" + self.log("superlink")[-3000:])
        return self._python_pid(popen)

    def start_node(self, index: int, count: int) -> None:
        name = node_name(index)
        args = [
            "supernode",
            "--superlink", f"127.0.0.1:{self.fleet_port}",
            "--ca", str(self.pki.ca),
            "--cert", str(self.pki.cert(name)),
            "--key", str(self.pki.key(name)),
            "--signing-key", str(self.pki.signing_key(name)),
            "--crl", str(self.pki.root / "ca" / "crl.pem"),
            "--data-dir", str(self.root / name),
            "--node-config", f"partition-id={index} num-partitions={count}",
        ]  # fmt: skip
        label = f"supernode-{name}"
        self.nodes.append(
            self.procs.spawn(
                self._command(label, args),
                self.root / f"{label}.log",
                self.root,
                wrapper=self.profile is not None,
            )
        )

    def client(self, user: str) -> ControlClient:
        return ControlClient(
            FederationConfig(
                name="bench",
                address=f"127.0.0.1:{self.control_port}",
                ca_certificate=self.pki.ca,
                certificate=self.pki.cert(user),
                key=self.pki.key(user),
            )
        )

    def enrol(self, count: int) -> None:
        with self.client(ADMIN) as admin:
            for i in range(count):
                admin.add_node(self.pki.cert(node_name(i)).read_bytes())

    def wait_online(self, count: int, deadline: Deadline) -> None:
        with self.client(ADMIN) as admin:

            def online() -> bool:
                for popen in self.nodes:
                    if popen.poll() is not None:
                        raise BenchError(f"a SuperNode exited with code {popen.returncode}")
                return sum(n.online for n in admin.nodes()) >= count

            wait_until(online, deadline, f"{count} SuperNodes online")


def _blob_bytes_after_cleanup(superlink_pid: int, blobs: Path, deadline: Deadline) -> int:
    """The blob store's size once the run's ServerApp has exited and the SuperLink has
    released the run's bodies (the run reads finished a moment before that)."""

    def size() -> int:
        return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file())

    wait_until(lambda: not descendants(superlink_pid), deadline.sooner(10), "the ServerApp to exit")
    settle = Deadline(3.0)
    last = size()
    while settle.remaining() > 0:
        time.sleep(0.2)
        now = size()
        if now == last:
            break
        last = now
    return last


def follow_run(client: ControlClient, run_id: int, deadline: Deadline, echo: bool) -> list[str]:
    """The run's log lines, followed through the Control API until the run ends.

    The stream is read on a helper thread so that the deadline holds even if no line
    comes: past it the run is stopped (which ends the stream).
    """
    lines: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for line in client.logs(run_id, follow=True):
                lines.append(line.text)
                if echo:
                    print(f"    | {line.text}", flush=True)
        except grpc.RpcError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, name="follow-run", daemon=True)
    reader.start()
    reader.join(timeout=max(deadline.remaining(), 0))
    if reader.is_alive():
        with contextlib.suppress(grpc.RpcError):
            client.stop(run_id)
        reader.join(timeout=10)
        raise BenchError(f"run {run_id} did not end in time; stopped it")
    if errors:
        raise BenchError(f"following run {run_id} failed: {errors[0]}")
    return lines


def bench_runtime(
    pki: Pki,
    root: Path,
    *,
    nodes: int,
    values: int,
    warmup: int,
    rounds: int,
    deadline: Deadline,
    profile: Path | None,
    profile_format: str,
    verbose: bool,
    secagg: bool = False,
    profile_rate: int = 50,
) -> RuntimeResult:
    procs = Processes()
    fed = Federation(pki, root, procs, profile, profile_format, profile_rate)
    result = RuntimeResult()
    try:
        superlink_pid = fed.start_superlink(deadline)
        fed.enrol(nodes)
        for i in range(nodes):
            fed.start_node(i, nodes)
        fed.wait_online(nodes, deadline)
        result.superlink_idle_kb = vm_kb(superlink_pid, "VmRSS")
        spec = load_app_spec(APP)
        config = merge_run_config(
            spec.config,
            {
                "values": values,
                "nodes": nodes,
                "warmup-rounds": warmup,
                "rounds": rounds,
                "round-timeout": max(deadline.remaining(), 1.0),
                "secure-aggregation": secagg,
            },
        )
        bundle = build_bundle(APP)
        with fed.client(SCIENTIST) as client, CpuSampler() as sampler:
            run_id = client.submit(bundle, config, app_name=spec.name, app_version=spec.version)
            lines = follow_run(client, run_id, deadline, verbose)
            (info,) = client.runs(run_id)
            result.status, result.reason = info.status, info.reason
        result.superlink_peak_kb = vm_kb(superlink_pid, "VmHWM")
        result.blob_bytes = _blob_bytes_after_cleanup(
            superlink_pid, root / "superlink" / "blobs", deadline
        )
        node_pids = [fed._python_pid(p) for p in fed.nodes]
        result.supernode_peak_kb = max((vm_kb(pid, "VmHWM") for pid in node_pids), default=0)
        for text in lines:
            if not text.startswith(LINE_PREFIX):
                continue
            event = json.loads(text[len(LINE_PREFIX) :])
            kind = event.pop("event")
            if kind == "round":
                result.rounds.append(event)
            elif kind == "rss":
                result.serverapp_rss_kb = int(event["peak_rss_kb"])
            elif kind == "final":
                result.final = event
            elif kind == "failures":
                result.failures.append(event)
        if result.status != "finished":
            tail = "\n".join(lines[-20:])
            raise BenchError(f"run {run_id} {result.status}: {result.reason}\n{tail}")
        if result.failures:
            raise BenchError(f"nodes failed in run {run_id}: {result.failures}")
        if result.final.get("value") != result.final.get("expected") or result.final.get(
            "max"
        ) != result.final.get("expected"):
            raise BenchError(f"wrong final model: {result.final}")
        if len(result.measured()) != rounds:
            raise BenchError(f"expected {rounds} measured rounds, got {result.rounds}")
        # From the end of the last warm-up round (or the first round's start) to the end.
        ends = [float(r["ended"]) for r in result.rounds]  # type: ignore[arg-type]
        start = ends[warmup - 1] if warmup else ends[0] - float(result.rounds[0]["seconds"])  # type: ignore[arg-type]
        spent = sampler.between(start, ends[-1])
        result.cpu_per_round = {kind: seconds / rounds for kind, seconds in spent.items()}
        return result
    except BenchError as exc:
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted(root.glob("*.log"))[:4]
        )
        raise BenchError(f"{exc}\n{logs}") from None
    finally:
        procs.close()


# -- raw gRPC baseline -----------------------------------------------------------------

_RAW_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * MB),
    ("grpc.max_send_message_length", 8 * MB),
]


def _identity(data: bytes) -> bytes:
    return data


def raw_server_main(argv: list[str]) -> int:
    """``--raw-server [CA CERT KEY]``: serve Download/Upload; print the port; run until killed.

    ``Download`` (unary request: the size as 8 bytes) streams that many bytes in 1 MiB
    chunks; ``Upload`` (a stream of chunks) answers with the byte count.
    """
    from concurrent.futures import ThreadPoolExecutor

    cache: dict[int, list[bytes]] = {}
    lock = threading.Lock()

    def chunks_of(size: int) -> list[bytes]:
        with lock:
            if size not in cache:
                data = os.urandom(size)
                cache[size] = [data[i : i + CHUNK] for i in range(0, size, CHUNK)]
            return cache[size]

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from chunks_of(int.from_bytes(request, "big"))

    def upload(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = sum(len(chunk) for chunk in request_iterator)
        return total.to_bytes(8, "big")

    handler = grpc.method_handlers_generic_handler(
        "raw.Raw",
        {
            "Download": grpc.unary_stream_rpc_method_handler(
                download, request_deserializer=_identity, response_serializer=_identity
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=64), options=_RAW_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if argv:
        ca, cert, key = (Path(p).read_bytes() for p in argv)
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)
    return 0


def bench_raw(
    pki: Pki | None,
    *,
    nodes: int,
    nbytes: int,
    warmup: int,
    rounds: int,
    deadline: Deadline,
) -> list[float]:
    """Seconds of each measured round: ``nodes`` clients each download then upload ``nbytes``."""
    procs = Processes()
    tls = [str(pki.ca), str(pki.server_cert), str(pki.server_key)] if pki else []
    with tempfile.TemporaryDirectory(prefix="raw-") as tmp:
        log = Path(tmp) / "raw.log"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--raw-server", *tls],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.popens.append(popen)
        channels: list[grpc.Channel] = []
        try:
            assert popen.stdout is not None
            port = int(popen.stdout.readline() or b"0")
            if not port:
                raise BenchError("the raw server did not start: " + log.read_text()[-2000:])
            if pki is not None:
                name = node_name(0)
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=pki.ca.read_bytes(),
                    private_key=pki.key(name).read_bytes(),
                    certificate_chain=pki.cert(name).read_bytes(),
                )
            uploads = [os.urandom(CHUNK)[: min(CHUNK, nbytes - i)] for i in range(0, nbytes, CHUNK)]
            # One channel (one TCP/TLS connection) per client, like one per SuperNode;
            # distinct channel args keep gRPC from sharing a subchannel between them.
            for i in range(nodes):
                options = [*_RAW_OPTIONS, ("bench.client", i)]
                target = f"127.0.0.1:{port}"
                channel = (
                    grpc.secure_channel(target, credentials, options=options)
                    if pki is not None
                    else grpc.insecure_channel(target, options=options)
                )
                grpc.channel_ready_future(channel).result(timeout=max(deadline.remaining(), 1))
                channels.append(channel)
            request = nbytes.to_bytes(8, "big")

            def one_client(channel: grpc.Channel, errors: list[BaseException]) -> None:
                try:
                    download = channel.unary_stream(
                        "/raw.Raw/Download",
                        request_serializer=_identity,
                        response_deserializer=_identity,
                    )
                    got = sum(len(c) for c in download(request, timeout=deadline.remaining()))
                    upload = channel.stream_unary(
                        "/raw.Raw/Upload",
                        request_serializer=_identity,
                        response_deserializer=_identity,
                    )
                    sent = int.from_bytes(
                        upload(iter(uploads), timeout=deadline.remaining()), "big"
                    )
                    if got != nbytes or sent != nbytes:
                        raise BenchError(f"raw transfer moved {got}/{sent} of {nbytes} bytes")
                except BaseException as exc:  # reported by the caller
                    errors.append(exc)

            times: list[float] = []
            for round_index in range(warmup + rounds):
                deadline.check("measuring raw gRPC")
                errors: list[BaseException] = []
                threads = [
                    threading.Thread(target=one_client, args=(ch, errors)) for ch in channels
                ]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=max(deadline.remaining(), 0.1))
                elapsed = time.monotonic() - started
                if errors or any(t.is_alive() for t in threads):
                    raise BenchError(f"raw gRPC round failed: {errors[:1] or 'timed out'}")
                if round_index >= warmup:
                    times.append(elapsed)
            return times
        finally:
            for channel in channels:
                channel.close()
            procs.close(grace_s=2.0)


# -- the figures -----------------------------------------------------------------------


@dataclass
class Row:
    nodes: int
    values: int
    runtime: RuntimeResult | None = None
    raw_mtls: list[float] = field(default_factory=list)
    raw_plain: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def model_mb(self) -> float:
        return self.values * 4 / MB

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.runtime.measured()) if self.runtime else None

    @property
    def raw(self) -> float | None:
        return statistics.median(self.raw_mtls) if self.raw_mtls else None

    @property
    def raw_plaintext(self) -> float | None:
        return statistics.median(self.raw_plain) if self.raw_plain else None

    @property
    def ratio(self) -> float | None:
        return self.seconds / self.raw if self.seconds is not None and self.raw else None

    @property
    def superlink_growth_mb(self) -> float | None:
        """SuperLink peak RSS over its RSS with the nodes connected, before the run."""
        if self.runtime is None or not self.runtime.superlink_peak_kb:
            return None
        return (self.runtime.superlink_peak_kb - self.runtime.superlink_idle_kb) / 1024


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


LEGEND = """\
  s/round    median wall seconds of the measured rounds (ServerApp, time.monotonic)
  raw mTLS   median seconds for N gRPC clients to download then upload the model's
             bytes over loopback mutual TLS (raw plain: without TLS); ratio = s/round / raw
  push, 1st rep, last rep
             median offsets into the round (s) when the model was pushed and when the
             first and the last reply reached the ServerApp
  SL peak    VmHWM of the SuperLink; SL grow: that minus its RSS with the nodes connected,
             before the run; SN peak: the largest SuperNode VmHWM; SA peak: the
             ServerApp's ru_maxrss; blobs: the SuperLink's blob store on disk after the run
             (once its ServerApp has exited and the run's bodies are released)
"""


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'nodes':>5} {'values':>10} {'s/round':>8} {'raw mTLS':>8} {'ratio':>6} "
        f"{'raw plain':>9} {'push':>6} {'1st rep':>7} {'last rep':>8} "
        f"{'SL peak MB':>10} {'SL grow MB':>10} {'SN peak MB':>10} {'SA peak MB':>10} "
        f"{'blobs MB':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        rt = row.runtime
        print(
            f"{row.nodes:>5} {row.values:>10} {_fmt(row.seconds, '.3f'):>8} "
            f"{_fmt(row.raw, '.3f'):>8} {_fmt(row.ratio, '.2f'):>6} "
            f"{_fmt(row.raw_plaintext, '.3f'):>9} "
            f"{_fmt(rt.phase('push_s') if rt else None, '.3f'):>6} "
            f"{_fmt(rt.phase('first_reply_s') if rt else None, '.3f'):>7} "
            f"{_fmt(rt.phase('last_reply_s') if rt else None, '.3f'):>8} "
            f"{_fmt(rt.superlink_peak_kb / 1024 if rt else None, '.0f'):>10} "
            f"{_fmt(row.superlink_growth_mb, '.0f'):>10} "
            f"{_fmt(rt.supernode_peak_kb / 1024 if rt else None, '.0f'):>10} "
            f"{_fmt(rt.serverapp_rss_kb / 1024 if rt else None, '.0f'):>10} "
            f"{_fmt(rt.blob_bytes / MB if rt else None, '.0f'):>8}"
            + (f"  ERROR: {row.error.splitlines()[0]}" if row.error else "")
        )
    print()
    print(LEGEND, end="")


def print_cpu(rows: list[Row]) -> None:
    """CPU seconds per measured round, by kind of process (what the 2 cores are spent on)."""
    measured = [r for r in rows if r.runtime and r.runtime.cpu_per_round]
    if not measured:
        return
    kinds = [kind for _, kind in KINDS]
    cores = os.cpu_count() or 1
    header = (
        f"{'nodes':>5} {'values':>10} "
        + " ".join(f"{k:>10}" for k in ["superlink", "supernodes", "serverapp", "clientapps"])
        + f" {'total':>7} {f'/{cores} cores':>9} {'s/round':>8}"
    )
    print("\nCPU seconds per measured round (all processes of each kind):")
    print(header)
    print("-" * len(header))
    for row in measured:
        cpu = row.runtime.cpu_per_round  # type: ignore[union-attr]
        total = sum(cpu.values())
        cells = {k: cpu.get(k, 0.0) for k in kinds}
        print(
            f"{row.nodes:>5} {row.values:>10} "
            + " ".join(
                f"{cells[k]:>10.3f}" for k in ["superlink", "supernodes", "serverapp", "clientapps"]
            )
            + f" {total:>7.3f} {total / cores:>9.3f} {_fmt(row.seconds, '.3f'):>8}"
        )


def print_aims(rows: list[Row]) -> bool | None:
    """Print each aim that the measured configurations test; None if none does."""
    print("\nAims (issue 4):")
    ok = True
    tested = 0

    def verdict(passed: bool) -> str:
        return "MET" if passed else "NOT MET"

    for row in rows:
        if row.seconds is None:
            continue
        if row.nodes == 10 and row.values == 1_000_000:
            passed = row.seconds <= AIM_1M_SECONDS
            ok &= passed
            tested += 1
            print(
                f"  10 nodes x 1M values: {row.seconds:.3f} s per round "
                f"(aim <= {AIM_1M_SECONDS} s): {verdict(passed)}"
            )
        if row.values == 10_000_000 and row.ratio is not None:
            passed = row.ratio <= AIM_10M_RATIO
            ok &= passed
            tested += 1
            print(
                f"  {row.nodes} nodes x 10M values: {row.ratio:.2f}x the raw mTLS transfer "
                f"(aim <= {AIM_10M_RATIO}x): {verdict(passed)}"
            )
    # "Not growing with nodes x model size": the least-squares slope of the SuperLink's
    # RSS growth (peak over idle) against the round's traffic, nodes x model bytes. A
    # SuperLink that held every reply would show a slope of about 1; streaming through
    # the blob store, about 0 (its per-stream buffers grow with nodes, not with models).
    points = [
        (r.nodes * r.values * 4, r.superlink_growth_mb * MB)
        for r in rows
        if r.superlink_growth_mb is not None
    ]
    if len({x for x, _ in points}) >= 2:
        mean_x = statistics.fmean(x for x, _ in points)
        mean_y = statistics.fmean(y for _, y in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
            (x - mean_x) ** 2 for x, _ in points
        )
        passed = slope <= AIM_RSS_SLOPE
        ok &= passed
        tested += 1
        print(
            f"  SuperLink RSS growth vs nodes x model bytes: slope {slope:.3f} "
            f"(1 = holds every reply; aim <= {AIM_RSS_SLOPE}): {verdict(passed)}"
        )
    else:
        print("  SuperLink RSS vs nodes x model: needs two configurations of different size")
    return ok if tested else None


# -- main ------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(float(item)) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=_int_list, default=[3, 10], help="e.g. 3,10")
    parser.add_argument(
        "--values", type=_int_list, default=[1_000_000, 10_000_000], help="e.g. 1e6,1e7"
    )
    parser.add_argument("--warmup", type=int, default=1, help="rounds excluded (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds measured (default 3)")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 1M values, 2 rounds")
    parser.add_argument("--timeout", type=float, default=1200.0, help="overall seconds")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per config")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw gRPC baseline")
    parser.add_argument("--no-runtime", action="store_true", help="only the raw baseline")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--profile", type=Path, help="record py-spy flame graphs of every process into DIR"
    )
    parser.add_argument(
        "--profile-format",
        choices=["flamegraph", "speedscope", "raw"],
        default="flamegraph",
        help="py-spy output (raw: collapsed stacks, one file per process tree)",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=50, help="py-spy samples per second (default 50)"
    )
    parser.add_argument("--verbose", action="store_true", help="echo the run logs")
    parser.add_argument(
        "--secagg",
        action="store_true",
        help="also run each configuration with SecAgg+ and report it next to plain FedAvg",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.values, args.rounds = [3], [1_000_000], 2
    if args.warmup < 0 or args.rounds < 1:
        parser.error("--warmup must be >= 0 and --rounds >= 1")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--raw-server"]:
        return raw_server_main(argv[1:])
    args = parse_args(argv)
    # On SIGTERM or Ctrl-C unwind, so that every process started is ended.
    signal.signal(signal.SIGTERM, TERMINATION.handle)
    signal.signal(signal.SIGINT, TERMINATION.handle)
    overall = Deadline(args.timeout)
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="roundbench-") as tmp:
        root = Path(tmp)
        print(f"PKI for {max(args.nodes)} nodes ...", flush=True)
        pki = make_pki(root / "pki", max(args.nodes))
        for nodes in args.nodes:
            for values in args.values:
                row = Row(nodes, values)
                rows.append(row)
                label = f"{nodes} nodes x {values} values ({row.model_mb:.0f} MB)"
                try:
                    overall.check(f"starting {label}")
                    per_run = overall.sooner(args.run_timeout)
                    if not args.no_runtime:
                        print(f"{label}: runtime ...", flush=True)
                        run_root = root / f"run-{nodes}-{values}"
                        run_root.mkdir()
                        profile = None
                        if args.profile is not None:
                            profile = args.profile / f"{nodes}x{values}"
                            profile.mkdir(exist_ok=True)
                        row.runtime = bench_runtime(
                            pki,
                            run_root,
                            nodes=nodes,
                            values=values,
                            warmup=args.warmup,
                            rounds=args.rounds,
                            deadline=per_run,
                            profile=profile,
                            profile_format=args.profile_format,
                            profile_rate=args.profile_rate,
                            verbose=args.verbose,
                        )
                        print(
                            f"    rounds: {[round(s, 3) for s in row.runtime.measured()]} s",
                            flush=True,
                        )
                        shutil.rmtree(run_root, ignore_errors=True)
                        if args.secagg:
                            secure_root = root / f"secagg-{nodes}-{values}"
                            secure_root.mkdir()
                            secure = bench_runtime(
                                pki,
                                secure_root,
                                nodes=nodes,
                                values=values,
                                warmup=args.warmup,
                                rounds=args.rounds,
                                deadline=per_run,
                                profile=None,
                                profile_format=args.profile_format,
                                verbose=args.verbose,
                                secagg=True,
                            )
                            shutil.rmtree(secure_root, ignore_errors=True)
                            plain_s = statistics.median(row.runtime.measured())
                            secure_s = statistics.median(secure.measured())
                            print(
                                f"    SecAgg+ rounds: {[round(s, 3) for s in secure.measured()]} s;"
                                f" median {secure_s:.3f} s = {secure_s / plain_s:.2f}x plain"
                                f" FedAvg ({plain_s:.3f} s) in this run",
                                flush=True,
                            )
                            spent = ", ".join(
                                f"{kind} {seconds:.3f}"
                                for kind, seconds in secure.cpu_per_round.items()
                            )
                            print(f"    SecAgg+ CPU seconds per round: {spent}", flush=True)
                    if not args.no_raw:
                        print(f"{label}: raw gRPC ...", flush=True)
                        kwargs = {
                            "nodes": nodes,
                            "nbytes": values * 4,
                            "warmup": args.warmup,
                            "rounds": args.rounds,
                            "deadline": per_run,
                        }
                        row.raw_mtls = bench_raw(pki, **kwargs)  # type: ignore[arg-type]
                        row.raw_plain = bench_raw(None, **kwargs)  # type: ignore[arg-type]
                except (BenchError, grpc.RpcError, OSError) as exc:
                    row.error = str(exc)
                    print(f"{label}: FAILED: {exc}", file=sys.stderr, flush=True)
    print_table(rows)
    print_cpu(rows)
    aims_ok = print_aims(rows)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "nodes": r.nodes,
                        "values": r.values,
                        "seconds_per_round": r.seconds,
                        "rounds": r.runtime.rounds if r.runtime else [],
                        "raw_mtls_seconds": r.raw,
                        "raw_plain_seconds": r.raw_plaintext,
                        "ratio": r.ratio,
                        "superlink_peak_mb": r.runtime.superlink_peak_kb / 1024
                        if r.runtime
                        else None,
                        "superlink_idle_mb": r.runtime.superlink_idle_kb / 1024
                        if r.runtime
                        else None,
                        "supernode_peak_mb": r.runtime.supernode_peak_kb / 1024
                        if r.runtime
                        else None,
                        "serverapp_peak_mb": r.runtime.serverapp_rss_kb / 1024
                        if r.runtime
                        else None,
                        "blob_store_mb": r.runtime.blob_bytes / MB if r.runtime else None,
                        "cpu_seconds_per_round": r.runtime.cpu_per_round if r.runtime else {},
                        "error": r.error,
                    }
                    for r in rows
                ],
                indent=2,
            )
            + "\n"
        )
    failed = any(r.error for r in rows)
    if failed:
        verdict = "errors"
    elif aims_ok is None:
        verdict = "no aim applies to these configurations"
    else:
        verdict = "all aims met" if aims_ok else "aims not met"
    print("\nresult:", verdict)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
