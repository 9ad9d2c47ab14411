"""FedAvg for warm-up + measured rounds; prints machine-readable timings.

Every line this app prints for the benchmark starts with ``roundbench `` followed by
one JSON object:

* ``{"event": "round", "round": r, "warmup": bool, "seconds": s, "push_s": ...,
  "first_reply_s": ..., "last_reply_s": ..., "replies": n}`` per round. ``seconds``
  is the wall time (``time.monotonic``) between consecutive calls of FedAvg's
  ``evaluate_fn``, which :meth:`Strategy.start` calls before round 1 and after every
  round: so it covers a whole round (node sampling, encoding and uploading the model,
  every node's pull/train/push, streaming the replies back, aggregation).
  ``ended`` is the round's end on this host's monotonic clock (``CLOCK_MONOTONIC``, the
  same in every process), to line rounds up with samples taken elsewhere. The
  ``*_s`` phase marks are offsets from the round's start, taken by a thin Grid
  wrapper: ``push_s`` when ``push_messages`` returned (model encoded, uploaded,
  messages queued), ``first_reply_s``/``last_reply_s`` when the first/last reply was
  decoded and handed to FedAvg; ``rpc_<Name>_s`` the seconds spent in the AppIo calls
  ``GetNodes``, ``PushContent`` and ``PushMessages`` during the round (when the grid
  is the deployment's).
* ``{"event": "failures", "round": r, "count": n, "reasons": [...]}`` if a round had any.
* ``{"event": "final", "value": min, "max": max, "expected": e}``: the smallest and
  largest model value after the last round; every node adds ``step`` each round, so
  both must equal e = (warm-up + measured rounds) x step.
* ``{"event": "rss", "peak_rss_kb": k}``: this process's ``ru_maxrss`` at the end.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from appliance import ArrayRecord, Context, Grid, Message, MetricRecord, ServerApp
from appliance.strategy import FedAvg

app = ServerApp()


def emit(event: str, **fields: object) -> None:
    print("roundbench " + json.dumps({"event": event, **fields}), flush=True)


class TimedGrid(Grid):
    """Delegates to the run's grid and notes when pushes return and replies arrive."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner
        self.marks: dict[str, float] = {}
        self.rpc_seconds: dict[str, float] = {}
        self.replies = 0
        self._time_rpcs()

    def _time_rpcs(self) -> None:
        """Time the AppIo calls of a push (the deployment's grid keeps its stub in ``_stub``)."""
        stub = getattr(self._inner, "_stub", None)
        for name in ("GetNodes", "PushContent", "PushMessages"):
            call = getattr(stub, name, None)
            if call is None:
                continue

            def timed(*args: object, _call: Any = call, _name: str = name, **kwargs: object) -> Any:
                begin = time.monotonic()
                try:
                    return _call(*args, **kwargs)
                finally:
                    spent = time.monotonic() - begin
                    self.rpc_seconds[_name] = self.rpc_seconds.get(_name, 0.0) + spent

            setattr(stub, name, timed)

    @property
    def run_id(self) -> int:
        return self._inner.run_id

    def get_node_ids(self) -> list[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = self._inner.push_messages(messages)
        self.marks["push"] = time.monotonic()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return self._inner.pull_messages(message_ids)

    def receive(
        self, message_ids: Iterable[str], *, timeout: float | None = None
    ) -> Iterator[Message]:
        for reply in self._inner.receive(message_ids, timeout=timeout):
            now = time.monotonic()
            self.marks.setdefault("first_reply", now)
            self.marks["last_reply"] = now
            self.replies += 1
            yield reply


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    values = int(cfg["values"])
    warmup = int(cfg["warmup-rounds"])
    rounds = int(cfg["rounds"])
    nodes = int(cfg["nodes"])
    step = float(cfg["step"])
    timeout = float(cfg["round-timeout"])
    timed = TimedGrid(grid)
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        wait_for_nodes_s=timeout,
    )
    started: list[float] = []

    def clock(server_round: int, _arrays: ArrayRecord) -> MetricRecord | None:
        now = time.monotonic()
        if started:
            begin = started[-1]
            phases = {f"{k}_s": round(t - begin, 6) for k, t in sorted(timed.marks.items())}
            phases.update({f"rpc_{k}_s": round(t, 6) for k, t in sorted(timed.rpc_seconds.items())})
            emit(
                "round",
                round=server_round,
                warmup=server_round <= warmup,
                seconds=round(now - begin, 6),
                ended=now,
                replies=timed.replies,
                **phases,
            )
        timed.marks.clear()
        timed.rpc_seconds.clear()
        timed.replies = 0
        started.append(time.monotonic())
        return None

    secure = None
    if cfg.get("secure-aggregation"):
        from secagg import SecAggPlus

        secure = SecAggPlus(clip_range=2.0 * abs(step) + 1.0)
    result = strategy.start(
        secure_aggregation=secure,
        grid=timed,
        initial_arrays=ArrayRecord([np.zeros(values, dtype=np.float32)]),
        num_rounds=warmup + rounds,
        timeout=timeout,
        evaluate_fn=clock,
    )
    for server_round, failures in sorted(result.train_failures.items()):
        if failures:
            reasons = sorted({f.reason for f in failures})[:5]
            emit("failures", round=server_round, count=len(failures), reasons=reasons)
    model = result.arrays["0"]
    emit(
        "final",
        value=float(model.min()),
        max=float(model.max()),
        expected=(warmup + rounds) * step,
    )
    emit("rss", peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
