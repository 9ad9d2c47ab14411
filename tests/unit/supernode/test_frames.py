"""Frames between the SuperNode and a ClientApp: inline and in sealed memfds, and the
descriptors a hostile ClientApp could send instead."""

from __future__ import annotations

import fcntl
import gc
import mmap
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from appliance.message import Message
from appliance.records import ArrayRecord, RecordDict
from appliance.supernode.frames import (
    SEALED_MIN_BYTES,
    FrameError,
    PeerClosed,
    receive_frame,
    send_frame,
)
from appliance.wire import decode_message, encode_message, encode_message_parts

MAX = 64 * 2**20
_IN_MEMFD = 1 << 63


@pytest.fixture
def pair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield left, right
    left.close()
    right.close()


def _cross(left: socket.socket, right: socket.socket, parts: list) -> object:
    """Send on ``left`` (from a thread: a socket buffer is smaller than a frame), receive
    on ``right``."""
    sender = threading.Thread(target=send_frame, args=(left, parts))
    sender.start()
    try:
        return receive_frame(right, MAX, deadline=time.monotonic() + 10)
    finally:
        sender.join(10)


def _copies(fd: int) -> int:
    """How many of this process's descriptors refer to the same file as ``fd`` (so a
    test checks its own file, whatever other descriptors the process opens or closes)."""
    target = os.fstat(fd)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.fstat(int(name))
        except OSError:  # the directory listing's own descriptor, or one closed meanwhile
            continue
        count += (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino)
    return count


def _frame_memfds() -> int:
    """Descriptors of memfds that send_frame made, in this process."""
    gc.collect()  # mappings of earlier tests that only a collection frees
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:greenhouse-frame")
        except OSError:
            continue
    return count


def _send_word(sock: socket.socket, word: int, fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [struct.pack(">Q", word)], list(fds))


def _memfd(data: bytes, seals: int) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


ALL_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


@pytest.mark.parametrize("size", [0, 1, SEALED_MIN_BYTES - 1])
def test_a_small_frame_goes_inline(pair, size):
    left, right = pair
    data = os.urandom(size)
    frame = _cross(left, right, [data[: size // 2], memoryview(data)[size // 2 :]])
    assert isinstance(frame, bytearray)
    assert frame == data


def test_a_large_frame_goes_sealed_and_arrives_as_a_private_mapping(pair):
    left, right = pair
    data = os.urandom(SEALED_MIN_BYTES * 3 + 5)
    before = _frame_memfds()
    send_frame(left, [data[:7], np.frombuffer(data[7:], dtype=np.uint8)])
    frame = receive_frame(right, MAX)
    assert isinstance(frame, mmap.mmap)
    assert frame[:] == data
    frame[0] = (frame[0] + 1) % 256  # copy-on-write: decoding in place is allowed
    assert _frame_memfds() == before + 1  # the mapping's own descriptor, nothing else
    frame.close()
    assert _frame_memfds() == before


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_a_sealed_frame_is_read_from_shared_pages_not_copied(pair):
    left, right = pair
    size = 32 * 2**20
    fd = _memfd(b"\x07" * size, ALL_SEALS)
    _send_word(left, size | _IN_MEMFD, [fd])
    os.close(fd)
    before = _rss_anon_kb()
    frame = receive_frame(right, MAX)
    assert np.frombuffer(frame, dtype=np.uint8).sum() == 7 * size  # every page read
    assert _rss_anon_kb() - before < 8 * 1024  # no private copy of 32 MiB was made
    frame.close()


def test_a_message_crosses_sealed_and_decodes_in_place(pair):
    left, right = pair
    weights = np.arange(1_000_000, dtype=np.float32)
    content = RecordDict({"model": ArrayRecord({"w": weights})})
    message = Message(content, dst_node_id=3, message_type="train")
    parts = encode_message_parts(message)
    assert b"".join(parts) == encode_message(message)
    received = decode_message(_cross(left, right, parts))
    got = received.content["model"]["w"]
    np.testing.assert_array_equal(got, weights)
    got += 1  # the decoded arrays are writable (and private to this process)
    assert got[0] == 1


def test_the_sender_cannot_change_a_frame_once_sent(pair):
    left, right = pair
    fd = _memfd(b"a" * SEALED_MIN_BYTES, ALL_SEALS)
    _send_word(left, SEALED_MIN_BYTES | _IN_MEMFD, [fd])
    frame = receive_frame(right, MAX)
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"b", 0)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, SEALED_MIN_BYTES, flags=mmap.MAP_SHARED, prot=mmap.PROT_WRITE)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1)
    os.close(fd)
    assert frame[:] == b"a" * SEALED_MIN_BYTES


@pytest.mark.parametrize(
    ("seals", "reason"),
    [
        (0, "not sealed"),
        (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, "not sealed"),  # still writable
        (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK, "not sealed"),  # may still grow
    ],
)
def test_an_unsealed_memfd_is_refused(pair, seals, reason):
    left, right = pair
    fd = _memfd(b"x" * 4096, seals)
    _send_word(left, 4096 | _IN_MEMFD, [fd])
    with pytest.raises(FrameError, match=reason):
        receive_frame(right, MAX)
    assert _copies(fd) == 1  # the received duplicate is closed
    os.close(fd)


def test_a_sealed_memfd_of_another_size_is_refused(pair):
    left, right = pair
    fd = _memfd(b"x" * 4096, ALL_SEALS)
    _send_word(left, 8192 | _IN_MEMFD, [fd])
    with pytest.raises(FrameError, match="holds 4096 bytes, 8192 were announced"):
        receive_frame(right, MAX)
    os.close(fd)


def test_descriptors_that_are_not_memfds_are_refused(pair):
    left, right = pair
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as file:
        file.write(b"x" * 4096)
        file.flush()
        for fd in (read_end, file.fileno()):
            copies = _copies(fd)
            _send_word(left, 4096 | _IN_MEMFD, [fd])
            with pytest.raises(FrameError, match=r"not a memfd|not sealed"):
                receive_frame(right, MAX)
            assert _copies(fd) == copies
    os.close(read_end)
    os.close(write_end)


def test_a_sealed_frame_needs_exactly_one_descriptor(pair):
    left, right = pair
    one = _memfd(b"x" * 4096, ALL_SEALS)
    two = _memfd(b"x" * 4096, ALL_SEALS)
    _send_word(left, 4096 | _IN_MEMFD)
    with pytest.raises(FrameError, match="0 descriptors"):
        receive_frame(right, MAX)
    _send_word(left, 4096 | _IN_MEMFD, [one, two])  # the second is dropped on receipt
    frame = receive_frame(right, MAX)
    assert frame[:] == b"x" * 4096
    assert _copies(two) == 1
    frame.close()
    assert _copies(one) == 1
    os.close(one)
    os.close(two)


def test_a_descriptor_beside_an_inline_frame_is_refused_and_closed(pair):
    left, right = pair
    fd = _memfd(b"x", ALL_SEALS)
    _send_word(left, 1, [fd])
    left.sendall(b"x")
    with pytest.raises(FrameError, match="came with a frame sent inline"):
        receive_frame(right, MAX)
    assert _copies(fd) == 1
    os.close(fd)


@pytest.mark.parametrize("sealed", [False, True])
def test_an_oversized_frame_is_refused_before_it_is_read(pair, sealed):
    left, right = pair
    _send_word(left, (MAX + 1) | (_IN_MEMFD if sealed else 0))
    with pytest.raises(FrameError, match=f"announced a {MAX + 1}-byte frame"):
        receive_frame(right, MAX)


def test_a_peer_that_goes_away_is_reported(pair):
    left, right = pair
    _send_word(left, 10)
    left.sendall(b"abc")
    left.close()
    with pytest.raises(PeerClosed, match="after 3 of 10 bytes"):
        receive_frame(right, MAX)
    with pytest.raises(PeerClosed, match="after 0 bytes"):
        receive_frame(right, MAX)
    with pytest.raises(PeerClosed):
        send_frame(right, [b"x" * SEALED_MIN_BYTES])


def test_a_silent_peer_times_out(pair):
    _, right = pair
    with pytest.raises(TimeoutError):
        receive_frame(right, MAX, deadline=time.monotonic() + 0.2)
    with pytest.raises(TimeoutError):
        receive_frame(right, MAX, deadline=time.monotonic() - 1)


def test_frames_cross_both_ways_concurrently(pair):
    left, right = pair
    sizes = [5, SEALED_MIN_BYTES, 3 * SEALED_MIN_BYTES + 1, 100]
    got: list[bytes] = []

    def echo() -> None:
        for _ in sizes:
            frame = receive_frame(right, MAX)
            got.append(bytes(frame[:]))
            send_frame(right, [frame])  # while the other end reads

    thread = threading.Thread(target=echo)
    thread.start()
    for size in sizes:
        data = os.urandom(size)
        send_frame(left, [data])  # the echo thread reads as this writes
        assert receive_frame(left, MAX, deadline=time.monotonic() + 10)[:] == data
    thread.join(10)
    assert [len(g) for g in got] == sizes
