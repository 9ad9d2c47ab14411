"""A graceful stop for the SuperNode: the messages in progress finish, within a grace.

On SIGTERM the node stops taking messages but stays subscribed, so the SuperLink
does not answer for it ("node went offline") while a ClientApp finishes the message
it is working on and its reply is pushed. Messages not started yet are dropped
(the SuperLink answers for them once the node is gone). After ``grace_s`` the
ClientApps still working are killed, which turns their messages into error replies,
and only then does the subscription end. The site's audit log is closed after that,
by the node's own shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from appliance.logs import get_logger

__all__ = ["DrainingExecutor", "kill_clientapps"]

_log = get_logger("appliance.supernode")
#: How long killed ClientApps' messages may take to be answered with an error.
OVERDUE_S = 10.0


class DrainingExecutor(ThreadPoolExecutor):
    """The node's message workers; :meth:`drain_then` waits for the work in progress."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        self._drainer: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain_then(
        self, then: Callable[[], None], *, grace_s: float, overdue: Callable[[], None]
    ) -> None:
        """In a thread (once): drop the work not started, wait up to ``grace_s`` for the
        work in progress, call ``overdue`` if some is still running (and wait a little
        more), then call ``then``. Safe from a signal handler.
        """
        with self._lock:
            if self._drainer is not None:
                return
            self._drainer = threading.Thread(
                target=self._drain, args=(then, grace_s, overdue), name="drain", daemon=True
            )
        self._drainer.start()

    def _drain(self, then: Callable[[], None], grace_s: float, overdue: Callable[[], None]) -> None:
        try:
            with self._lock:
                pending = list(self._pending)
            running = [future for future in pending if not future.cancel()]
            if running:
                _log.warning("stopping: messages in progress may finish", count=len(running))
            _, late = wait(running, timeout=grace_s)
            if late:
                _log.warning(
                    "stopping: messages still in progress after the grace; killing their "
                    "ClientApps",
                    count=len(late),
                    grace_s=grace_s,
                )
                overdue()
                wait(late, timeout=OVERDUE_S)
        except Exception:
            _log.exception("draining the message workers failed")
        finally:
            then()


class _Killable(Protocol):
    def kill(self) -> None: ...


class _HasProcess(Protocol):
    @property
    def process(self) -> _Killable | None: ...


def kill_clientapps(runs: Iterable[_HasProcess]) -> None:
    """Kill the ClientApp process of each run that has one (from any thread)."""
    for run in list(runs):
        process = run.process
        if process is not None:
            process.kill()
