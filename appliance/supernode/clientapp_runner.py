"""The SuperNode's side of a run's ClientApp subprocess.

:class:`ClientAppProcess` starts the subprocess lazily (on the run's first message),
feeds it one message at a time and waits for the reply up to a deadline. Whatever
happens to the subprocess — it crashes, hangs or answers garbage — the SuperNode
gets a reply to send: an error reply naming what went wrong. A crashed process is
started again for the next message (its ``state`` is lost, and the error says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.clientapp import ErrorDetail
from appliance.context import UserConfig
from appliance.logs import get_logger
from appliance.message import Error, ErrorCode, Message
from appliance.process_env import scrubbed_env
from appliance.supernode.clientapp_entry import ENV_LIMITS
from appliance.supernode.clientapp_process import ENV_CONTEXT, ENV_SOCKET_FD
from appliance.supernode.frames import FrameError, receive_frame, send_frame
from appliance.supernode.limits import ResourceLimits
from appliance.wire import WireError, decode_message, encode_message_parts

__all__ = ["ClientAppProcess"]

_log = get_logger("appliance.supernode.clientapp")


class ClientAppProcess:
    """One run's ClientApp subprocess on this node."""

    def __init__(
        self,
        app_dir: Path,
        *,
        run_id: int,
        node_id: int,
        node_config: UserConfig,
        run_config: UserConfig,
        work_dir: Path,
        max_message_bytes: int,
        error_detail: ErrorDetail = ErrorDetail.MESSAGE,
        extra_env: Mapping[str, str] | None = None,
        limits: ResourceLimits | None = None,
        before_message: Callable[[int], None] | None = None,
    ) -> None:
        self._app_dir = app_dir
        self._settings = {
            "run_id": run_id,
            "node_id": node_id,
            "node_config": node_config,
            "run_config": run_config,
            "max_message_bytes": max_message_bytes,
            "error_detail": error_detail.value,
        }
        # Applied by the child itself before it imports the app (clientapp_entry).
        self._limits = json.dumps(dataclasses.asdict(limits)) if limits is not None else ""
        self._work_dir = work_dir
        self._max_bytes = max_message_bytes
        self._extra_env = dict(extra_env or {})
        self._before_message = before_message  # e.g. re-arm the CPU-time limit
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self.restarts = 0

    def _start(self) -> None:
        self._channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = scrubbed_env(self._extra_env)
        env[ENV_SOCKET_FD] = str(child_end.fileno())
        env[ENV_CONTEXT] = json.dumps(self._settings)
        if self._limits:
            env[ENV_LIMITS] = self._limits
        self._work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = (self._work_dir / "clientapp.log").open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 -- fixed interpreter and module
                [sys.executable, "-m", "appliance.supernode.clientapp_entry", str(self._app_dir)],
                pass_fds=(child_end.fileno(),),
                env=env,
                cwd=self._work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
            child_end.close()
        _log.info("clientapp started", run_id=self._settings["run_id"], pid=self._process.pid)

    def handle(self, message: Message, *, timeout_s: float) -> Message:
        """Send ``message`` to the ClientApp and return its reply (or an error reply)."""
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                self.restarts += 1
                self._close_channel()
            self._start()
        assert self._process is not None
        assert self._channel is not None
        if self._before_message is not None:
            self._before_message(self._process.pid)
        deadline = time.monotonic() + timeout_s
        try:
            send_frame(self._channel, encode_message_parts(message), deadline=deadline)
            reply = decode_message(receive_frame(self._channel, self._max_bytes, deadline=deadline))
        except TimeoutError:
            self.stop()
            return self._error(message, f"the ClientApp did not reply within {timeout_s:g} s")
        except (OSError, FrameError, WireError) as exc:
            # Crashed, or alive and breaking the protocol: either way it is done.
            self._close_channel()  # a live child sees the end of its socket and exits
            code = self._end(self._process, grace_s=5.0)
            return self._error(message, f"the ClientApp process failed ({exc}; exit code {code})")
        if reply.metadata.reply_to_message_id != message.metadata.message_id:
            self.stop()
            return self._error(message, "the ClientApp process answered a different message")
        return reply

    @staticmethod
    def _error(message: Message, reason: str) -> Message:
        _log.warning("clientapp failed", reason=reason)
        return Message(Error(ErrorCode.CLIENT_APP_CRASHED, reason), reply_to=message)

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.close()

    def kill(self) -> None:
        """Kill the child now, from any thread (a shutdown past its grace).

        A :meth:`handle` in progress sees the socket close and returns an error reply;
        the socket is left to it and to :meth:`stop`.
        """
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 3.0) -> None:
        """Close the socket (the child exits on EOF), then terminate if it lingers."""
        self._close_channel()
        process, self._process = self._process, None
        self._end(process, grace_s)

    @staticmethod
    def _end(process: subprocess.Popen[bytes] | None, grace_s: float) -> int | None:
        """Wait up to ``grace_s`` for ``process`` to exit, then kill it; its exit code."""
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
