"""ClientApp resource limits: real subprocesses with small limits and bounded time."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest

from appliance.supernode import clientapp_entry, limits
from appliance.supernode.limits import (
    LimitError,
    ResourceLimits,
    apply_limits,
    check_network_isolation,
    cpu_seconds_used,
    grant_cpu_seconds,
    network_isolation_available,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux limits")
TIMEOUT_S = 30


def _limited(code: str, limits_: ResourceLimits) -> list[str]:
    """A command line running ``code`` after ``apply_limits``, as the ClientApp process does."""
    prelude = (
        "from appliance.supernode.limits import ResourceLimits, apply_limits\n"
        f"apply_limits(ResourceLimits(**{asdict(limits_)!r}))\n"
    )
    return [sys.executable, "-I", "-c", prelude + code]


def _run(code: str, limits_: ResourceLimits, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _limited(code, limits_),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        **kwargs,
    )


def test_allocating_past_the_memory_limit_fails():
    cap = ResourceLimits(memory_bytes=256 * 2**20, cpu_seconds=None, isolate_network=False)
    result = _run("b = bytearray(512 * 2**20)\nprint('allocated')", cap)
    assert result.returncode != 0
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr or result.returncode < 0


def test_memory_under_the_limit_is_fine():
    cap = ResourceLimits(memory_bytes=256 * 2**20, cpu_seconds=None, isolate_network=False)
    result = _run("b = bytearray(16 * 2**20)\nprint('allocated')", cap)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "allocated"


def test_a_cpu_loop_is_killed_by_the_cpu_limit():
    cap = ResourceLimits(memory_bytes=None, cpu_seconds=1, isolate_network=False)
    result = _run("while True:\n    pass", cap)
    assert result.returncode == -signal.SIGXCPU


def test_core_dumps_are_always_off():
    cap = ResourceLimits(memory_bytes=None, cpu_seconds=None, isolate_network=False)
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE))"
    assert _run(code, cap).stdout.strip() == "(0, 0)"


def test_grant_cpu_seconds_rearms_the_limit_per_message():
    cap = ResourceLimits(memory_bytes=None, cpu_seconds=1, isolate_network=False)
    code = "import sys\nsys.stdin.readline()\nwhile True:\n    pass"
    child = subprocess.Popen(_limited(code, cap), stdin=subprocess.PIPE)
    try:
        used = cpu_seconds_used(child.pid)
        assert 0 <= used < 1
        grant_cpu_seconds(child.pid, 1)
        soft, hard = resource.prlimit(child.pid, resource.RLIMIT_CPU)
        assert soft == math.ceil(used) + 1
        assert hard == resource.RLIM_INFINITY
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.wait(timeout=TIMEOUT_S) == -signal.SIGXCPU
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_cpu_time_of_a_gone_process_is_an_error():
    child = subprocess.Popen([sys.executable, "-I", "-c", "pass"])
    child.wait()
    with pytest.raises(LimitError, match=f"cannot read the CPU time of process {child.pid}"):
        cpu_seconds_used(child.pid)


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="memory_bytes must be >="):
        ResourceLimits(memory_bytes=1024, cpu_seconds=None, isolate_network=False)
    with pytest.raises(ValueError, match="cpu_seconds must be >= 1"):
        ResourceLimits(memory_bytes=None, cpu_seconds=0, isolate_network=False)


@pytest.mark.skipif(not network_isolation_available(), reason="no user namespaces on this host")
def test_isolated_child_reaches_no_network_and_keeps_its_uid(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = (
        "import os, socket\n"
        "open('made-here', 'w').close()\n"
        "s = socket.socket()\n"
        "s.settimeout(5)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    try:
        cap = ResourceLimits(memory_bytes=None, cpu_seconds=None, isolate_network=True)
        result = _run(code, cap, cwd=tmp_path)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused"), result.stdout
    assert (tmp_path / "made-here").stat().st_uid == os.getuid()


def test_network_isolation_fails_closed_when_the_kernel_refuses(monkeypatch):
    monkeypatch.setattr(limits, "_libc_unshare", lambda: lambda _flags: -1)
    with pytest.raises(LimitError, match=r"network = 'none' cannot be enforced on this host"):
        check_network_isolation()
    cap = ResourceLimits(memory_bytes=None, cpu_seconds=None, isolate_network=True)
    # The namespace comes first, so this process (the test's) gets no limit either.
    with pytest.raises(LimitError, match="cannot isolate the network"):
        apply_limits(cap)


def test_the_clientapp_process_reports_limits_it_cannot_apply(monkeypatch):
    monkeypatch.setattr(limits, "_libc_unshare", lambda: lambda _flags: -1)
    cap = ResourceLimits(memory_bytes=None, cpu_seconds=None, isolate_network=True)
    monkeypatch.setenv(clientapp_entry.ENV_LIMITS, json.dumps(asdict(cap)))
    reason = clientapp_entry.confine()
    assert reason.startswith(
        "the site's [execution] limits could not be applied: cannot isolate the network: "
    )
    assert clientapp_entry.ENV_LIMITS not in os.environ


def test_hidden_files_and_directories_are_empty_but_the_kept_run_directory(tmp_path):
    key = tmp_path / "pki" / "node.key"
    key.parent.mkdir()
    key.write_text("SECRET KEY")
    data = tmp_path / "supernode-data"
    (data / "audit").mkdir(parents=True)
    (data / "audit" / "site-audit.key").write_text("SECRET SITE KEY")
    (data / "ledger.db").write_text("budget")
    work = data / "runs" / "7" / "work"
    work.mkdir(parents=True)
    (data / "runs" / "8").mkdir()
    code = (
        "import os\n"
        f"print(repr(open({str(key)!r}).read()))\n"
        f"print(sorted(os.listdir({str(data)!r})), sorted(os.listdir({str(data / 'runs')!r})))\n"
        "open('made-here', 'w').write('ok')\n"
        f"print(os.path.exists({str(data / 'audit' / 'site-audit.key')!r}))\n"
        "try:\n"
        f"    open({str(data / 'ledger.db')!r}, 'w')\n"
        "    print('wrote the ledger')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    cap = ResourceLimits(
        memory_bytes=None,
        cpu_seconds=None,
        isolate_network=False,
        hide=(str(key), str(data)),
        keep=(str(data / "runs" / "7"),),
    )
    result = _run(code, cap, cwd=work)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "''"  # the key reads as /dev/null
    assert lines[1] == "['runs'] ['7']"  # only the run's own directory is there
    assert lines[2] == "False"
    assert lines[3].startswith("refused")
    assert (work / "made-here").read_text() == "ok"  # its own directory stays writable
    assert key.read_text() == "SECRET KEY"  # and nothing changed outside the namespace
    assert (data / "ledger.db").read_text() == "budget"


def test_relative_hidden_paths_are_refused():
    with pytest.raises(ValueError, match="must be absolute"):
        ResourceLimits(memory_bytes=None, cpu_seconds=None, isolate_network=False, hide=("k",))
