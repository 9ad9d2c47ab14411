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
body = bytes(int(sys.argv[2]))
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


def _later_faults(mode: str, size: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(size)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@glibc_only
def test_tuning_is_applied():
    assert keep_freed_buffers() is True


@glibc_only
@pytest.mark.parametrize("mib", [4, 40])  # 40 MiB: over glibc's largest mmap threshold
def test_a_freed_buffer_is_reused_without_page_faults(mib):
    size = mib * 1024 * 1024
    pages = 2 * size // 4096  # per message: two buffers
    assert _later_faults("default", size) >= 2 * pages  # handed back: faulted afresh
    assert _later_faults("tuned", size) < pages // 4  # the first message's pages are reused
