"""Starting state calls from many threads at once (shared by the state tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

JOIN_TIMEOUT_S = 60


def start_together(targets: list[Callable[[], None]]) -> None:
    """Start all targets together; re-raise the first error (bounded by a timeout)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=JOIN_TIMEOUT_S)
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a state call hung"
    if errors:
        raise errors[0]
