"""The allocator tuning: freed message buffers' pages are reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from appliance.allocator import keep_freed_buffers

_PROBE = """
import resource, sys
from appliance.allocator import keep_freed_buffers
if sys.argv[1] == "tuned":
    assert keep_freed_buffers()
body = bytes(4 * 1024 * 1024)
faults = []
for _ in range(5):  # a message's life: received into a buffer, copied once, both freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    received = bytearray(body)
    copy = bytes(received)
    del received, copy
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _later_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@glibc_only
def test_tuning_is_applied():
    assert keep_freed_buffers() is True


@glibc_only
def test_a_freed_buffer_is_reused_without_page_faults():
    pages = 8 * 1024 * 1024 // 4096  # per message: two 4 MiB buffers
    assert _later_faults("default") >= 2 * pages  # glibc handed them back: faulted afresh
    assert _later_faults("tuned") < pages // 4  # the first message's pages are reused
