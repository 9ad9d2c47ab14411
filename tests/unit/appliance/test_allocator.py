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


_THREADS_PROBE = """
import ctypes, sys, threading
from appliance.allocator import share_one_heap
if sys.argv[1] == "tuned":
    assert share_one_heap()
addresses = []
def allocate():
    buffer = bytearray(64 * 1024)  # over pymalloc's limit, under glibc's mmap threshold
    addresses.append(ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer)))
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
    thread.join()
with open("/proc/self/maps") as maps:
    heap = next(line for line in maps if line.rstrip().endswith("[heap]"))
start, end = (int(x, 16) for x in heap.split()[0].split("-"))
print(sum(not start <= a < end for a in addresses))
"""


def _outside_main_heap(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@glibc_only
def test_threads_share_the_main_heap():
    assert _outside_main_heap("default") > 0  # a heap per thread
    assert _outside_main_heap("tuned") == 0
