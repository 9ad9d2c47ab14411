"""Frames between the SuperNode and a run's ClientApp process, over a Unix socket pair.

A frame is its length (8 bytes, big-endian) and its bytes. A frame of at least
:data:`SEALED_MIN_BYTES` goes in a sealed memfd instead: the length word has its top
bit set and the descriptor rides on it (``SCM_RIGHTS``). The sender writes the
frame into a fresh memfd straight from the message's buffers and seals it against
writing, shrinking, growing and further seals; the receiver takes it only with
those seals and the announced size, then maps it copy-on-write. A 40 MB model so
crosses with one copy, where a pipe took four (join, write, a zeroed buffer, read),
and neither process can change a frame once the other has it: a ClientApp cannot
rewrite a reply after the SuperNode has checked it.

Each end passes at most one descriptor per frame; a frame with more, or with one
where none belongs, is refused (the extra descriptors are closed). Reads and writes
take an optional deadline (``time.monotonic()``) and raise :class:`TimeoutError`.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import stat
import struct
import time
from collections.abc import Iterable
from typing import Any

from appliance.errors import ApplianceError

__all__ = [
    "SEALED_MIN_BYTES",
    "FrameError",
    "PeerClosed",
    "receive_frame",
    "send_frame",
]

#: Frames at least this long travel in a sealed memfd.
SEALED_MIN_BYTES = 256 * 1024
_LENGTH = struct.Struct(">Q")
_IN_MEMFD = 1 << 63
#: What a memfd must be sealed against before a frame in it is trusted.
_REQUIRED_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class FrameError(ApplianceError):
    """The other end broke the frame protocol."""


class PeerClosed(FrameError):
    """The other end closed its socket (between frames or in the middle of one)."""


def _timeout(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def _sealed_memfd(parts: Iterable[Any]) -> int:
    fd = os.memfd_create("greenhouse-frame", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _REQUIRED_SEALS | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_frame(sock: socket.socket, parts: Iterable[Any], *, deadline: float | None = None) -> None:
    """Send the frame made of ``parts`` (buffers, written in order, never joined).

    Raises:
        PeerClosed: the other end is gone.
        TimeoutError: the deadline passed (the socket is then mid-frame: close it).
    """
    parts = list(parts)
    length = sum(memoryview(part).nbytes for part in parts)
    try:
        if length >= SEALED_MIN_BYTES:
            fd = _sealed_memfd(parts)
            try:
                sock.settimeout(_timeout(deadline))
                socket.send_fds(sock, [_LENGTH.pack(length | _IN_MEMFD)], [fd])
            finally:
                os.close(fd)
            return
        sock.settimeout(_timeout(deadline))
        sock.sendall(_LENGTH.pack(length) + b"".join(parts))
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerClosed(f"the other end closed its socket: {exc}") from exc


def receive_frame(
    sock: socket.socket, max_bytes: int, *, deadline: float | None = None
) -> bytearray | mmap.mmap:
    """Receive one frame of at most ``max_bytes``: a writable buffer (a private
    copy-on-write mapping for a sealed frame).

    Raises:
        PeerClosed: the other end closed its socket.
        FrameError: a frame too long, or a descriptor that is not a sealed memfd of
            the announced size.
        TimeoutError: the deadline passed.
    """
    word, fds = _receive_word(sock, deadline)
    try:
        length = word & ~_IN_MEMFD
        if length > max_bytes:
            raise FrameError(f"the other end announced a {length}-byte frame, over {max_bytes}")
        if not word & _IN_MEMFD:
            if fds:
                raise FrameError("a descriptor came with a frame sent inline")
            return _receive_exactly(sock, length, deadline)
        if len(fds) != 1:
            raise FrameError(f"a sealed frame came with {len(fds)} descriptors, not one")
        return _map_sealed(fds[0], length)
    finally:
        for fd in fds:
            os.close(fd)


def _receive_word(sock: socket.socket, deadline: float | None) -> tuple[int, list[int]]:
    header = b""
    fds: list[int] = []
    try:
        while len(header) < _LENGTH.size:
            sock.settimeout(_timeout(deadline))
            data, more, _flags, _addr = socket.recv_fds(sock, _LENGTH.size - len(header), 1)
            fds += more
            if not data:
                raise PeerClosed(f"the other end closed its socket after {len(header)} bytes")
            header += data
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    (word,) = _LENGTH.unpack(header)
    return word, fds


def _receive_exactly(sock: socket.socket, count: int, deadline: float | None) -> bytearray:
    buffer = bytearray(count)
    view = memoryview(buffer)
    filled = 0
    while filled < count:
        sock.settimeout(_timeout(deadline))
        read = sock.recv_into(view[filled:])
        if not read:
            raise PeerClosed(f"the other end closed its socket after {filled} of {count} bytes")
        filled += read
    return buffer


def _map_sealed(fd: int, length: int) -> mmap.mmap:
    try:
        info = os.fstat(fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:  # EINVAL: a descriptor that cannot carry seals
        raise FrameError(f"a sealed frame's descriptor is not a memfd: {exc}") from exc
    if not stat.S_ISREG(info.st_mode) or seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
        raise FrameError("a frame's memfd is not sealed against writing and resizing")
    if info.st_size != length or length == 0:
        raise FrameError(f"a sealed frame holds {info.st_size} bytes, {length} were announced")
    try:
        # Not MAP_POPULATE: on a writable private mapping it would copy every page.
        return mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise FrameError(f"a sealed frame could not be mapped: {exc}") from exc
