"""Handing reply bodies to a run's ServerApp as open files, not as bytes.

A reply body is already a file in the SuperLink's blob store. Streaming it to the
ServerApp over the AppIo channel means reading it, cutting it into gRPC messages and
reassembling it on the other side: measured, a tenth of a second of CPU per round at
10 nodes x 4 MB. Instead the SuperLink opens the blob read-only and passes the open
descriptor (``SCM_RIGHTS``) over a Unix socket pair made for the run when its
ServerApp was started; the ServerApp maps the file and decodes the body in place.

The socket pair is the authentication: only the run's own ServerApp holds the other
end, so a descriptor cannot reach another run. Each descriptor travels with a ticket
(an 8-byte counter); the AppIo reply head names the ticket, which lets several
concurrent ``Receive`` streams share one socket. A descriptor grants reading one
content-addressed file, nothing more: the ServerApp checks its size against the head
and the SuperLink hashed the bytes when it stored them.

When a descriptor cannot be sent (the socket is full or closed), the caller streams
the bytes as before: this is a fast path, never the only path.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections import OrderedDict

from appliance.transport import TransportError

__all__ = ["ENV_BODY_SOCKET", "BodyReceiver", "BodySender", "body_socket_pair", "map_body"]

#: The environment variable naming the ServerApp's end of the pair (a descriptor number).
ENV_BODY_SOCKET = "GREENHOUSE_BODY_SOCKET"
_TICKET = struct.Struct(">Q")
#: Descriptors received but not yet claimed that a receiver keeps (oldest closed first).
_STASH_LIMIT = 256
#: Errors of ``send`` that mean the other end is gone for good (others pass, such as
#: ETOOMANYREFS while too many descriptors wait unread in sockets).
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF})


def body_socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected ``SOCK_SEQPACKET`` pair: (the SuperLink's end, the ServerApp's end).

    The ServerApp's end is inheritable, to be passed with ``pass_fds``; the
    SuperLink's end never blocks.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.setblocking(False)
    child.set_inheritable(True)
    return parent, child


class BodySender:
    """The SuperLink's end: sends open files, each with a fresh ticket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._tickets = itertools.count(1)
        self._closed = False

    def send(self, fd: int) -> int | None:
        """Pass ``fd`` to the ServerApp; its ticket, or None if it could not be sent.

        The caller keeps (and closes) its own ``fd``. None means: the ServerApp's
        queue is full or it has gone; send the bytes another way.
        """
        if self._closed:
            return None
        ticket = next(self._tickets)
        try:
            socket.send_fds(self._sock, [_TICKET.pack(ticket)], [fd])
        except OSError as exc:
            if exc.errno in _PEER_GONE:  # the ServerApp closed its end (it exited)
                self._closed = True
            return None  # full for now: this body streams
        return ticket

    def close(self) -> None:
        """Close the SuperLink's end."""
        self._closed = True
        self._sock.close()


class BodyReceiver:
    """The ServerApp's end: claims descriptors by ticket (thread-safe)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._changed = threading.Condition()
        self._reading = False  # one thread waits on the socket; the others on _changed
        self._eof: TransportError | None = None
        self._stash: OrderedDict[int, int] = OrderedDict()

    @classmethod
    def from_fd(cls, fd: int) -> BodyReceiver:
        """Wrap an inherited descriptor (see :data:`ENV_BODY_SOCKET`)."""
        return cls(socket.socket(fileno=fd))

    def take(self, ticket: int, timeout_s: float = 30.0) -> int:
        """The descriptor sent with ``ticket``; the caller owns (and closes) it.

        The SuperLink sends a descriptor before the head that names it, so it is
        normally waiting already.

        Raises:
            TransportError: it did not arrive within ``timeout_s``, or the socket
                closed or carried something that is not one ticket and one descriptor.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while ticket not in self._stash:
                if self._eof is not None:
                    raise self._eof
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(f"reply body {ticket} did not arrive")
                if self._reading:  # another thread reads the socket and tells us
                    self._changed.wait(remaining)
                    continue
                self._reading = True
                try:
                    self._changed.release()
                    try:
                        select.select([self._sock], [], [], remaining)
                    finally:
                        self._changed.acquire()
                    self._drain(ticket)
                finally:
                    self._reading = False
                    self._changed.notify_all()
            return self._stash.pop(ticket)

    def _drain(self, wanted: int) -> None:
        """Stash what waits on the socket, up to ``wanted`` (the caller holds the lock)."""
        while self._eof is None:
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, _TICKET.size + 1, 1)
            except BlockingIOError:
                return
            if len(data) == _TICKET.size and len(fds) == 1 and not flags & socket.MSG_CTRUNC:
                ticket = _TICKET.unpack(data)[0]
                self._stash[ticket] = fds[0]
                while len(self._stash) > _STASH_LIMIT:
                    os.close(self._stash.popitem(last=False)[1])
                if ticket == wanted:
                    return
                continue
            for fd in fds:
                os.close(fd)
            if not data and not fds:  # what was queued before is stashed already
                self._eof = TransportError("the SuperLink closed the reply body socket")
                return
            raise TransportError("malformed reply body message on the body socket")

    def close(self) -> None:
        """Close the socket and every unclaimed descriptor."""
        with self._changed:
            while self._stash:
                os.close(self._stash.popitem()[1])
            self._sock.close()


def map_body(fd: int, size: int) -> mmap.mmap | bytearray:
    """The ``size`` bytes of the file ``fd`` (closed afterwards), mapped copy-on-write.

    Decoding in place reads the arrays straight from the page cache, with no copy and
    no zeroed buffer to copy into; an array written to gets private pages. The
    SuperLink never rewrites a blob file something still maps (it reuses a file only
    under a write lease, which a mapping prevents), so the bytes stay the ones it
    hashed.

    Raises:
        TransportError: the file is not exactly ``size`` bytes long, or cannot be mapped.
    """
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise TransportError(f"reply body file is {actual} bytes, its head declared {size}")
        if size == 0:
            return bytearray()
        try:
            return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise TransportError(f"reply body file cannot be mapped: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
