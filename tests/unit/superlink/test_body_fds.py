"""Reply bodies passed as open files over a SOCK_SEQPACKET pair (real sockets, real files)."""

import errno
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

from appliance.records import ArrayRecord, RecordDict
from appliance.superlink.body_fds import BodyReceiver, BodySender, body_socket_pair, map_body
from appliance.transport import TransportError
from appliance.wire import decode_record_dict, encode_record_dict

MIB = 1024 * 1024
_STASH_LIMIT = 256


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def assert_closed(fd):
    with pytest.raises(OSError, match="Bad file descriptor") as raised:
        os.fstat(fd)
    assert raised.value.errno == errno.EBADF


@pytest.fixture
def pair():
    parent, child = body_socket_pair()
    sender, receiver = BodySender(parent), BodyReceiver(child)
    try:
        yield parent, sender, receiver
    finally:
        receiver.close()
        sender.close()


@pytest.fixture
def make_file(tmp_path):
    counter = iter(range(1_000_000))

    def make(data: bytes) -> int:
        path = tmp_path / f"body-{next(counter)}"
        path.write_bytes(data)
        return os.open(path, os.O_RDONLY)

    return make


@pytest.fixture
def send_bytes(pair, make_file):
    """Send a fresh file holding ``data``; the ticket (the sender's own fd is closed)."""
    _, sender, _ = pair

    def send(data: bytes) -> int | None:
        fd = make_file(data)
        try:
            return sender.send(fd)
        finally:
            os.close(fd)

    return send


def test_the_pair_is_seqpacket_non_blocking_and_inheritable_on_the_child_side():
    parent, child = body_socket_pair()
    with parent, child:
        assert parent.type == socket.SOCK_SEQPACKET and child.type == socket.SOCK_SEQPACKET
        assert parent.family == socket.AF_UNIX
        assert parent.getblocking() is False
        assert child.get_inheritable() is True
        assert parent.get_inheritable() is False


def test_a_descriptor_arrives_with_its_ticket_and_reads_the_file(pair, make_file):
    _, sender, receiver = pair
    data = os.urandom(3 * MIB + 17)  # more than one preadv may return at once
    fd = make_file(data)
    sent = os.fstat(fd)
    ticket = sender.send(fd)
    assert isinstance(ticket, int) and ticket > 0
    os.fstat(fd)  # the sender keeps its own descriptor
    os.close(fd)
    got = receiver.take(ticket, timeout_s=5)
    arrived = os.fstat(got)  # the same open file, though the sender closed its copy
    assert (arrived.st_dev, arrived.st_ino) == (sent.st_dev, sent.st_ino)
    assert map_body(got, len(data))[:] == data
    assert_closed(got)  # map_body closes it


def test_tickets_are_fresh_per_send(send_bytes, pair):
    _, _, receiver = pair
    tickets = [send_bytes(b"x") for _ in range(5)]
    assert len(set(tickets)) == 5 and all(t > 0 for t in tickets)
    for ticket in tickets:
        os.close(receiver.take(ticket, timeout_s=5))


def test_from_fd_wraps_an_inherited_descriptor(make_file):
    parent, child = body_socket_pair()
    sender = BodySender(parent)
    receiver = BodyReceiver.from_fd(child.detach())
    try:
        fd = make_file(b"inherited")
        ticket = sender.send(fd)
        os.close(fd)
        assert map_body(receiver.take(ticket, timeout_s=5), 9)[:] == b"inherited"
    finally:
        receiver.close()
        sender.close()


def test_tickets_claimed_out_of_order(send_bytes, pair):
    _, _, receiver = pair
    tickets = [send_bytes(f"body {i}".encode()) for i in range(3)]
    assert None not in tickets
    order = [2, 0, 1]  # the third first: the first two wait in the stash
    got = {i: map_body(receiver.take(tickets[i], timeout_s=5), 6)[:] for i in order}
    assert got == {0: b"body 0", 1: b"body 1", 2: b"body 2"}


def test_concurrent_takes_each_get_their_own_file(send_bytes, pair):
    _, _, receiver = pair
    bodies = [f"body number {i:02d}".encode() for i in range(16)]
    tickets = [send_bytes(body) for body in bodies]
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def claim(mine: list[int]) -> None:
        try:
            barrier.wait(timeout=5)
            for index in mine:
                results[index] = bytes(
                    map_body(receiver.take(tickets[index], timeout_s=5), len(bodies[index]))[:]
                )
        except BaseException as exc:
            errors.append(exc)

    # each thread claims two tickets, the later ones first, so claims cross in the stash
    work = [[15 - t, t] for t in range(threads_n)]
    threads = [threading.Thread(target=claim, args=(w,)) for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert results == dict(enumerate(bodies))


def test_map_body_with_a_wrong_size_raises_and_still_closes(make_file):
    for declared in (9, 11, 0):
        fd = make_file(b"0123456789")
        with pytest.raises(TransportError, match=f"is 10 bytes, its head declared {declared}"):
            map_body(fd, declared)
        assert_closed(fd)


def test_map_body_is_decoded_in_place_and_never_writes_the_file(tmp_path):
    weights = np.arange(1000, dtype=np.float32)
    path = tmp_path / "body"
    path.write_bytes(encode_record_dict(RecordDict({"m": ArrayRecord({"w": weights})})))
    fd = os.open(path, os.O_RDONLY)  # read-only, as the SuperLink opens a blob
    body = map_body(fd, path.stat().st_size)
    assert_closed(fd)
    decoded = decode_record_dict(body)["m"]["w"]
    np.testing.assert_array_equal(decoded, weights)
    decoded += 1  # writable: the page is copied for this process
    assert decoded[0] == 1
    reread = decode_record_dict(path.read_bytes())["m"]["w"]
    np.testing.assert_array_equal(reread, weights)  # the blob file is unchanged


def test_map_body_of_an_empty_file(make_file):
    fd = make_file(b"")
    assert map_body(fd, 0)[:] == bytearray()
    assert_closed(fd)


def test_a_ticket_never_sent_times_out(send_bytes, pair):
    _, _, receiver = pair
    sent = send_bytes(b"kept")
    with pytest.raises(TransportError, match=f"reply body {sent + 1000} did not arrive"):
        receiver.take(sent + 1000, timeout_s=0.2)
    # what arrived while waiting was stashed, not lost
    assert map_body(receiver.take(sent, timeout_s=0), 4)[:] == b"kept"


def test_the_sender_closing_is_reported(send_bytes, pair):
    _, sender, receiver = pair
    sent = send_bytes(b"last one")
    sender.close()
    assert map_body(receiver.take(sent, timeout_s=5), 8)[:] == b"last one"  # queued before EOF
    with pytest.raises(TransportError, match="closed the reply body socket"):
        receiver.take(sent + 1, timeout_s=5)


@pytest.mark.parametrize(
    ("data", "fd_count"),
    [
        (b"junk", 0),  # short, no descriptor
        (struct.pack(">Q", 1), 0),  # a ticket without a descriptor
        (struct.pack(">Q", 1) + b"!", 1),  # a ticket too long
        (b"", 1),  # a descriptor without a ticket
        (struct.pack(">Q", 1), 2),  # two descriptors
        (struct.pack(">Q", 1), 3),  # more than the control buffer holds
    ],
    ids=["junk", "no-fd", "long-ticket", "no-ticket", "two-fds", "three-fds"],
)
def test_a_malformed_message_is_refused_without_leaking(pair, make_file, data, fd_count):
    parent, _, receiver = pair
    fds = [make_file(b"f") for _ in range(fd_count)]
    before = open_fds()
    if fds:
        socket.send_fds(parent, [data], fds)
    else:
        parent.send(data)
    with pytest.raises(TransportError, match="malformed reply body message"):
        receiver.take(1, timeout_s=5)
    assert open_fds() == before  # whatever descriptors arrived were closed
    for fd in fds:
        os.close(fd)


def test_a_malformed_message_does_not_spoil_what_follows(pair, send_bytes):
    parent, _, receiver = pair
    parent.send(b"junk")
    ticket = send_bytes(b"fine")
    with pytest.raises(TransportError, match="malformed"):
        receiver.take(ticket, timeout_s=5)
    assert map_body(receiver.take(ticket, timeout_s=5), 4)[:] == b"fine"


def test_send_returns_none_once_the_receiver_is_gone(pair, make_file):
    _, sender, receiver = pair
    fd = make_file(b"nobody listens")
    try:
        assert sender.send(fd) is not None
        receiver.close()
        assert sender.send(fd) is None
        assert sender.send(fd) is None  # and stays so
        os.fstat(fd)  # the caller's descriptor is untouched
    finally:
        os.close(fd)


def test_send_returns_none_without_blocking_when_the_queue_is_full(pair, make_file):
    _, sender, receiver = pair
    fd = make_file(b"queued")
    try:
        tickets = []
        for _ in range(100_000):  # a blocking send would hang here (the suite's timeout)
            ticket = sender.send(fd)
            if ticket is None:
                break
            tickets.append(ticket)
        else:
            pytest.fail("the socket never filled up")
        assert len(tickets) > 10
        assert sender.send(fd) is None  # still full
        # a full queue is not a dead peer: once the ServerApp reads, sending works again
        os.close(receiver.take(tickets[0], timeout_s=5))
        again = sender.send(fd)
        assert again is not None and again not in tickets
        assert map_body(receiver.take(again, timeout_s=5), 6)[:] == b"queued"
    finally:
        os.close(fd)


def test_the_stash_is_bounded_oldest_closed_first(send_bytes, pair):
    _, _, receiver = pair
    baseline = open_fds()
    # The socket holds fewer than 300 messages, so send in two batches: 200, then 101.
    first = [send_bytes(f"{i:04d}".encode()) for i in range(200)]
    assert None not in first
    os.close(receiver.take(first[-1], timeout_s=5))  # 199 now wait in the stash
    assert open_fds() == baseline + 199
    second = [send_bytes(f"{i:04d}".encode()) for i in range(200, 301)]
    assert None not in second
    last = receiver.take(second[-1], timeout_s=5)
    # 300 were stashed in all: the 44 oldest were closed, 256 kept (one of them taken)
    assert open_fds() == baseline + _STASH_LIMIT
    assert map_body(last, 4)[:] == b"0300"
    for evicted in (first[0], first[43]):
        with pytest.raises(TransportError, match="did not arrive"):
            receiver.take(evicted, timeout_s=0.05)
    assert map_body(receiver.take(first[44], timeout_s=0), 4)[:] == b"0044"
    assert map_body(receiver.take(second[0], timeout_s=0), 4)[:] == b"0200"
    assert open_fds() == baseline + _STASH_LIMIT - 3  # three read (and closed) since


def test_close_closes_the_stashed_descriptors(make_file):
    parent, child = body_socket_pair()
    sender = BodySender(parent)
    baseline = open_fds()  # counts both socket ends
    receiver = BodyReceiver(child)
    fd = make_file(b"stashed")
    tickets = [sender.send(fd) for _ in range(5)]
    os.close(fd)
    os.close(receiver.take(tickets[-1], timeout_s=5))  # four now wait in the stash
    assert open_fds() == baseline + 4
    receiver.close()
    assert open_fds() == baseline - 1  # the stash and the receiver's socket
    sender.close()


def test_a_passing_kernel_refusal_does_not_close_the_sender(pair, make_file, monkeypatch):
    # ETOOMANYREFS (too many descriptors in flight for a non-root user) cannot be
    # provoked as root, so the kernel's answer is stood in for; EPIPE is the real thing.
    _, sender, receiver = pair
    fd = make_file(b"later")
    real_send_fds = socket.send_fds

    def refuse(*args, **kwargs):
        raise OSError(errno.ETOOMANYREFS, "Too many references")

    try:
        monkeypatch.setattr(socket, "send_fds", refuse)
        assert sender.send(fd) is None
        monkeypatch.setattr(socket, "send_fds", real_send_fds)
        ticket = sender.send(fd)
        assert ticket is not None  # the fast path is back once the kernel accepts
        assert map_body(receiver.take(ticket, timeout_s=5), 5)[:] == b"later"
    finally:
        os.close(fd)


def test_a_take_waiting_for_a_lost_ticket_does_not_hold_up_another(send_bytes, pair):
    _, _, receiver = pair
    failures = []

    def wait_for_lost():
        try:
            receiver.take(999, timeout_s=5)
        except TransportError as exc:
            failures.append(exc)

    waiter = threading.Thread(target=wait_for_lost)
    waiter.start()
    try:
        for _ in range(500):  # until the waiter is the thread reading the socket
            if receiver._reading:
                break
            time.sleep(0.01)
        assert receiver._reading
        ticket = send_bytes(b"mine")
        assert map_body(receiver.take(ticket, timeout_s=3), 4)[:] == b"mine"
        assert waiter.is_alive()  # served before the other's wait ran out
    finally:
        waiter.join()
    assert failures and "did not arrive" in str(failures[0])
