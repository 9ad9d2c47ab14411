"""The SuperNode's graceful stop: work in progress finishes within the grace, then is cut."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from appliance.supernode.drain import DrainingExecutor


@pytest.fixture
def workers() -> Iterator[DrainingExecutor]:
    executor = DrainingExecutor(max_workers=1, thread_name_prefix="test")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_work_in_progress_finishes_and_work_not_started_is_dropped(workers) -> None:
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    finished: list[str] = []

    def message(name: str) -> None:
        started.set()
        release.wait(10)
        finished.append(name)

    workers.submit(message, "in progress")
    queued = workers.submit(message, "not started")
    assert started.wait(10)
    overdue: list[bool] = []
    workers.drain_then(done.set, grace_s=30, overdue=lambda: overdue.append(True))
    workers.drain_then(lambda: finished.append("twice"), grace_s=0, overdue=lambda: None)
    assert not done.wait(0.3)  # the subscription stays open while the message runs
    release.set()
    assert done.wait(10)
    assert finished == ["in progress"] and queued.cancelled() and not overdue


def test_work_past_the_grace_is_cut_by_the_overdue_hook(workers) -> None:
    release, done = threading.Event(), threading.Event()
    running = threading.Event()

    def stuck() -> None:
        running.set()
        release.wait(30)

    workers.submit(stuck)
    assert running.wait(10)
    workers.drain_then(done.set, grace_s=0.2, overdue=release.set)  # "kill the ClientApp"
    assert done.wait(10)
    assert release.is_set()
