"""Run lifecycle on the SuperLink: one ServerApp subprocess per run.

:class:`RunLauncher` unpacks a run's bundle into a private directory, starts
``appliance.superlink.serverapp_process`` with a fresh secret token (in the
environment, never on the command line), copies its stdout/stderr into the run
log, and settles the run when the process exits: ``finished`` if it reported
success, ``failed`` with the reason it reported (or its exit code), ``stopped`` if a
user stopped it, ``failed`` with the shutdown's reason when the SuperLink stops
(:meth:`RunLauncher.shutdown`). A ServerApp that crashes ends its own run only; the
SuperLink keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from appliance.bundle import extract_bundle
from appliance.logs import get_logger
from appliance.process_env import scrubbed_env
from appliance.state import AuditActor, InvalidTransition, LogStream, RunStatus, State
from appliance.superlink.body_fds import ENV_BODY_SOCKET, BodySender, body_socket_pair
from appliance.superlink.hub import Hub
from appliance.superlink.serverapp_process import ENV_ADDRESS, ENV_MAX_REPLY_BYTES, ENV_TOKEN

__all__ = ["BUNDLE_SIGNATURE", "RunLauncher"]

#: The run option holding the publisher signature submitted with a run (its JSON text).
BUNDLE_SIGNATURE = "bundle_signature"

_log = get_logger("appliance.superlink.runs")
MAX_LOG_LINE = 8192


@dataclass
class _Process:
    run_id: int
    token_digest: bytes
    popen: subprocess.Popen[bytes]
    directory: Path
    bodies: BodySender
    outcome: tuple[bool, str] | None = None  # (failed, reason) as reported via Finish
    stop_reason: str | None = None
    stop_actor: AuditActor | None = None
    shutdown_reason: str | None = None  # the SuperLink stopped: the run fails
    threads: list[threading.Thread] = field(default_factory=list)


class RunLauncher:
    """Starts, watches and stops the ServerApp subprocesses of runs."""

    def __init__(
        self,
        state: State,
        hub: Hub,
        *,
        runs_dir: Path,
        appio_address: str,
        max_message_bytes: int,
        on_run_ended: Callable[[int], None] = lambda _run_id: None,
    ) -> None:
        self._state = state
        self._on_run_ended = on_run_ended
        self._hub = hub
        self._runs_dir = runs_dir
        self._appio_address = appio_address
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._processes: dict[int, _Process] = {}
        self._shutdown_reason: str | None = None  # set once: no run starts after it
        runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- tokens --------------------------------------------------------------------------

    def run_for_token(self, token: str) -> int | None:
        """The run a ServerApp token belongs to, or None (constant-time comparison)."""
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        with self._lock:
            processes = list(self._processes.values())
        found = None
        for process in processes:
            if hmac.compare_digest(process.token_digest, digest):
                found = process.run_id
        return found

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, run_id: int) -> None:
        """Unpack the bundle and start the run's ServerApp (pending -> starting).

        After :meth:`shutdown` the run fails with the shutdown's reason instead.
        """
        if self._shutdown_reason is not None:
            self._state.transition_run(run_id, RunStatus.FAILED, self._shutdown_reason)
            return
        run = self._state.get_run(run_id)
        directory = self._runs_dir / str(run_id)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700)
        data = b"".join(self._state.open_bundle(run.bundle_sha256))
        app_dir = extract_bundle(data, directory / "app", expected_sha256=run.bundle_sha256)
        token = secrets.token_urlsafe(32)
        own_end, child_end = body_socket_pair()
        env = scrubbed_env(
            {
                ENV_ADDRESS: self._appio_address,
                ENV_TOKEN: token,
                ENV_MAX_REPLY_BYTES: str(self._max_message_bytes),
                ENV_BODY_SOCKET: str(child_end.fileno()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._state.transition_run(run_id, RunStatus.STARTING)
        with child_end:
            try:
                popen = subprocess.Popen(  # noqa: S603 -- fixed interpreter and module
                    [sys.executable, "-m", "appliance.superlink.serverapp_process", str(app_dir)],
                    env=env,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(child_end.fileno(),),
                )
            except BaseException:
                own_end.close()
                raise
        process = _Process(
            run_id,
            hashlib.sha256(token.encode()).digest(),
            popen,
            directory,
            BodySender(own_end),
        )
        with self._lock:
            self._processes[run_id] = process
            process.shutdown_reason = self._shutdown_reason  # a shutdown raced the start
        if process.shutdown_reason is not None:
            _signal_group(popen, signal.SIGTERM)
        self._system_log(run_id, f"ServerApp started (pid {popen.pid})")
        assert popen.stdout is not None
        assert popen.stderr is not None
        for stream, pipe in ((LogStream.STDOUT, popen.stdout), (LogStream.STDERR, popen.stderr)):
            self._spawn(process, self._pump, run_id, stream, pipe)
        self._spawn(process, self._watch, process)

    @staticmethod
    def _spawn(process: _Process, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        process.threads.append(thread)
        thread.start()

    def body_sender(self, run_id: int) -> BodySender | None:
        """Where the run's reply bodies go as open files (None once its ServerApp ended)."""
        with self._lock:
            process = self._processes.get(run_id)
        return None if process is None else process.bodies

    def mark_running(self, run_id: int) -> None:
        """The ServerApp connected (starting -> running); idempotent."""
        with contextlib.suppress(InvalidTransition):
            self._state.transition_run(run_id, RunStatus.RUNNING)

    def report(self, run_id: int, *, failed: bool, reason: str) -> None:
        """The ServerApp says how it ended (applied when its process exits)."""
        with self._lock:
            process = self._processes.get(run_id)
            if process is not None and process.outcome is None:
                process.outcome = (failed, reason)

    def stop(
        self,
        run_id: int,
        reason: str,
        *,
        actor: AuditActor | None = None,
        grace_s: float = 5.0,
    ) -> bool:
        """Stop a run's ServerApp (the run ends ``stopped``, by ``actor`` in the audit log).

        Returns False if the run has no process.
        """
        with self._lock:
            process = self._processes.get(run_id)
            if process is None:
                return False
            process.stop_reason = reason
            process.stop_actor = actor
        _signal_group(process.popen, signal.SIGTERM)
        try:
            process.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.popen, signal.SIGKILL)
        return True

    def shutdown(self, reason: str, *, grace_s: float = 5.0) -> None:
        """Stop every ServerApp; each run fails with ``reason``; wait for them to settle.

        The processes get SIGTERM together and SIGKILL after ``grace_s``; a run a
        ServerApp finished before it could be stopped stays ``finished``. Runs
        started afterwards fail at once.
        """
        with self._lock:
            self._shutdown_reason = reason
            processes = list(self._processes.values())
            for process in processes:
                process.shutdown_reason = reason
        for process in processes:
            _signal_group(process.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in processes:
            try:
                process.popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                _signal_group(process.popen, signal.SIGKILL)
        for process in processes:
            for thread in process.threads:
                thread.join(timeout=10)

    # -- watching ------------------------------------------------------------------------

    def _pump(self, run_id: int, stream: LogStream, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")[:MAX_LOG_LINE]
            try:
                self._state.append_log(run_id, stream, text)
            except Exception:
                _log.exception("could not store a run log line", run_id=run_id)
        pipe.close()

    def _watch(self, process: _Process) -> None:
        code = process.popen.wait()
        for thread in process.threads[:2]:
            thread.join(timeout=10)
        status, reason = _settle(process, code)
        self._system_log(process.run_id, f"ServerApp exited with code {code}: run {status}")
        try:
            actor = process.stop_actor if status is RunStatus.STOPPED else None
            self._state.transition_run(process.run_id, status, reason, actor=actor)
        except InvalidTransition as exc:
            _log.warning("run already settled", run_id=process.run_id, error=str(exc))
        with self._lock:
            self._processes.pop(process.run_id, None)
            idle = not self._processes
        process.bodies.close()
        if idle:  # no run in flight: the data dir gives back its spare body files
            self._state.blobs.drop_spares()
        try:
            released = self._state.release_run_bodies(process.run_id)
            _log.info("run bodies released", run_id=process.run_id, blobs=len(released))
        except Exception:
            _log.exception("could not release the run's message bodies", run_id=process.run_id)
        self._hub.notify_run_ended(process.run_id, status.value)
        self._hub.forget_run(process.run_id)
        shutil.rmtree(process.directory, ignore_errors=True)
        try:
            self._on_run_ended(process.run_id)
        except Exception:
            _log.exception("run-ended hook failed", run_id=process.run_id)
        _log.info("run ended", run_id=process.run_id, status=status.value, reason=reason)

    def _system_log(self, run_id: int, text: str) -> None:
        try:
            self._state.append_log(run_id, LogStream.SYSTEM, text)
        except Exception:
            _log.exception("could not store a run log line", run_id=run_id)


def _settle(process: _Process, code: int) -> tuple[RunStatus, str | None]:
    if process.stop_reason is not None:
        return RunStatus.STOPPED, process.stop_reason
    if process.outcome is not None and process.outcome[0] is False and code == 0:
        return RunStatus.FINISHED, None
    if process.shutdown_reason is not None:
        return RunStatus.FAILED, process.shutdown_reason
    if process.outcome is not None:
        failed, reason = process.outcome
        if failed:
            return RunStatus.FAILED, reason or f"ServerApp exited with code {code}"
    return RunStatus.FAILED, f"ServerApp exited with code {code} without reporting a result"


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
