"""Wire codec throughput against the numpy floor.

For an ArrayRecord of 1M and 10M float32 values, measures encode+decode through
:mod:`appliance.wire` and, in the same run, the cheapest possible round trip
(``ndarray.tobytes()`` + ``np.frombuffer``), and prints MB/s (array bytes / time) and
the ratio ours / baseline (the figure; aim >= 0.5). Also measures decoding a
``bytearray`` in place and the ``Message`` path.

Each path is timed against its own baseline, the two run alternately (baseline,
ours, baseline, ours, ...), and each figure is the median of several repeats, so that
machine noise (and allocator state) hits both sides alike.

    .venv/bin/python benchmarks/wire.py [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import numpy as np

from appliance.message import Message
from appliance.records import ArrayRecord, RecordDict
from appliance.wire import decode_message, decode_record_dict, encode_message, encode_record_dict

SIZES = (1_000_000, 10_000_000)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _paired(
    baseline: Callable[[], object], ours: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``baseline`` and ``ours``, run alternately ``repeats`` times each."""
    base_times: list[float] = []
    our_times: list[float] = []
    baseline()  # warm-up: page in buffers, settle the allocator
    ours()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            base_times.append(_timed(baseline))
            our_times.append(_timed(ours))
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(base_times), statistics.median(our_times)


def bench(n: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    array = rng.standard_normal(n, dtype=np.float32)
    nbytes = array.nbytes
    records = RecordDict({"params": ArrayRecord({"w": array})})
    message = Message(records, dst_node_id=1, message_type="train")
    frame = encode_record_dict(records)
    message_frame = encode_message(message)

    def baseline() -> object:
        return np.frombuffer(array.tobytes(), dtype=np.float32)

    def ours() -> object:
        return decode_record_dict(encode_record_dict(records))

    def ours_message() -> object:
        return decode_message(encode_message(message))

    def encode_only() -> object:
        return encode_record_dict(records)

    def decode_only() -> object:
        return decode_record_dict(frame)

    inplace_buffer = bytearray(frame)

    def decode_inplace() -> object:
        return decode_record_dict(inplace_buffer)

    def decode_message_only() -> object:
        return decode_message(message_frame)

    # Sanity: every path gives back the same values.
    assert np.array_equal(ours()["params"]["w"], array)
    assert np.array_equal(ours_message().content["params"]["w"], array)
    assert np.array_equal(decode_inplace()["params"]["w"], array)

    def mbs(seconds: float) -> float:
        return nbytes / seconds / 1e6

    print(f"\nArrayRecord of {n:,} float32 ({nbytes / 1e6:.0f} MB), median of {repeats} runs")
    print(f"  {'path':<46} {'MB/s':>8} {'ms':>7} {'base MB/s':>10} {'ratio':>6}")
    rows = [
        ("encode+decode RecordDict, bytes", ours),
        ("encode+decode Message, bytes", ours_message),
        ("encode RecordDict only", encode_only),
        ("decode RecordDict only, bytes (one copy)", decode_only),
        ("decode RecordDict only, bytearray (in place)", decode_inplace),
        ("decode Message only, bytes", decode_message_only),
    ]
    figures = []
    for label, fn in rows:
        base_s, ours_s = _paired(baseline, fn, repeats)
        ratio = mbs(ours_s) / mbs(base_s)
        figures.append(ratio)
        print(
            f"  {label:<46} {mbs(ours_s):>8.0f} {ours_s * 1e3:>7.2f} {mbs(base_s):>10.0f}"
            f" {ratio:>6.2f}"
        )
    print(f"  figure (encode+decode / tobytes+frombuffer): {figures[0]:.2f}  (aim >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="runs per case (median taken)")
    args = parser.parse_args()
    print(f"numpy {np.__version__}; baseline = ndarray.tobytes() + np.frombuffer, same run;")
    print("ratio = MB/s of the path / MB/s of the baseline (array bytes / time)")
    for n in SIZES:
        bench(n, args.repeats if n <= 1_000_000 else max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
