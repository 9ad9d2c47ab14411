"""The content-addressed blob store (file system only) and blob gc through the state."""

import hashlib
import mmap
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from appliance.state import BlobError, BlobNotFound, BlobRef, BlobStore, BlobTooLarge, RunStatus
from appliance.state.errors import InvalidArgument

MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


def _files(store):
    return sorted(p.name for p in store.directory.iterdir())


def test_put_stream_is_content_addressed(store):
    ref = store.put_stream([b"hello ", bytearray(b"wor"), memoryview(b"ld")], max_bytes=11)
    assert ref == BlobRef(sha256=hashlib.sha256(b"hello world").hexdigest(), size=11)
    assert _files(store) == [ref.sha256]
    assert store.exists(ref.sha256)
    assert store.size(ref.sha256) == 11
    assert store.read_bytes(ref.sha256) == b"hello world"


def test_same_bytes_are_stored_once(store):
    a = store.put_bytes(b"x" * 1000)
    b = store.put_stream([b"x" * 500, b"x" * 500], max_bytes=1000)
    assert a == b
    assert _files(store) == [a.sha256]


def test_permissions(store):
    ref = store.put_bytes(b"secret model")
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.directory / ref.sha256).stat().st_mode) == 0o600


def test_streams_in_chunks(store):
    data = os.urandom(3 * MIB + 5)
    ref = store.put_stream((data[i : i + MIB] for i in range(0, len(data), MIB)), max_bytes=4 * MIB)
    chunks = list(store.open_chunks(ref.sha256))
    assert [len(c) for c in chunks] == [MIB, MIB, MIB, 5]
    assert b"".join(chunks) == data
    assert [len(c) for c in store.open_chunks(ref.sha256, chunk_size=2 * MIB)] == [2 * MIB, MIB + 5]


def test_put_stream_does_not_buffer_the_stream(store):
    seen = []

    def chunks():
        for i in range(4):
            seen.append(i)
            # every earlier chunk is already on disk, in the temp file
            assert sum(p.stat().st_size for p in store.directory.iterdir()) == i * 1024
            yield b"z" * 1024

    store.put_stream(chunks(), max_bytes=4096)
    assert seen == [0, 1, 2, 3]


def test_too_large_is_refused_and_cleaned_up(store):
    with pytest.raises(BlobTooLarge, match="exceeds the limit of 10 bytes; nothing stored"):
        store.put_stream([b"12345", b"67890", b"1"], max_bytes=10)
    assert _files(store) == []
    with pytest.raises(BlobTooLarge, match="limit of 2 bytes"):
        store.put_bytes(b"abc", max_bytes=2)
    assert _files(store) == []


def test_a_failing_stream_leaves_nothing(store):
    def chunks():
        yield b"partial"
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError, match="peer went away"):
        store.put_stream(chunks(), max_bytes=100)
    assert _files(store) == []


def test_bad_input(store):
    with pytest.raises(InvalidArgument, match="blob chunks must be bytes, got str"):
        store.put_stream(["text"], max_bytes=100)
    assert _files(store) == []
    with pytest.raises(InvalidArgument, match="max_bytes must be an int >= 0"):
        store.put_stream([b""], max_bytes=-1)
    with pytest.raises(InvalidArgument, match="chunk_size must be an int >= 1"):
        store.open_chunks("a" * 64, chunk_size=0)


@pytest.mark.parametrize("name", ["../etc/passwd", "A" * 64, "a" * 63, "", ".tmp-x"])
def test_names_are_validated_before_any_path_is_built(store, name):
    with pytest.raises(InvalidArgument, match="sha256 must be 64 lowercase hex"):
        store.open_chunks(name)
    with pytest.raises(InvalidArgument, match="sha256 must be 64 lowercase hex"):
        store.delete(name)


def test_missing_blob(store):
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound, match=f"blob {missing} not found"):
        store.open_chunks(missing)  # raised on the call, not on the first next()
    with pytest.raises(BlobNotFound, match=f"blob {missing} not found"):
        store.size(missing)
    assert store.delete(missing) is False


def test_corruption_is_detected_while_streaming(store):
    ref = store.put_bytes(b"original bytes")
    (store.directory / ref.sha256).write_bytes(b"tampered bytes")
    with pytest.raises(BlobError, match=f"blob {ref.sha256} is corrupt"):
        b"".join(store.open_chunks(ref.sha256))


def _count_fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_durable_writes_are_fsynced_and_transient_ones_are_not(store, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    store.put_bytes(b"a bundle")
    assert len(calls) == 2  # the file, then the directory
    calls.clear()
    ref = store.put_stream([b"a reply body"], max_bytes=100, durable=False)
    assert calls == []
    assert store.read_bytes(ref.sha256) == b"a reply body"


def test_a_durable_write_heals_a_torn_copy(store):
    ref = store.put_stream([b"model bytes"], max_bytes=100, durable=False)
    (store.directory / ref.sha256).write_bytes(b"torn")  # as a crash could leave it
    with pytest.raises(BlobError, match="corrupt"):
        store.read_bytes(ref.sha256)
    store.put_bytes(b"model bytes")
    assert store.read_bytes(ref.sha256) == b"model bytes"


def test_a_transient_write_keeps_the_stored_copy(store):
    ref = store.put_bytes(b"bundle bytes")
    before = (store.directory / ref.sha256).stat()
    os.utime(store.directory / ref.sha256, (before.st_atime - 60, before.st_mtime - 60))
    store.put_stream([b"bundle bytes"], max_bytes=100, durable=False)
    after = (store.directory / ref.sha256).stat()
    assert after.st_ino == before.st_ino
    assert after.st_mtime > before.st_mtime - 60  # refreshed: out of an age-based gc
    assert _files(store) == [ref.sha256]


def _count_hashing(monkeypatch):
    from appliance.state import blobs

    hashed = []  # the bytes each digest was fed

    class Digest:
        def __init__(self):
            self._digest = hashlib.sha256()
            hashed.append(0)

        def update(self, data):
            hashed[-1] += len(data)
            self._digest.update(data)

        def hexdigest(self):
            return self._digest.hexdigest()

    class Counting:
        sha256 = Digest

    monkeypatch.setattr(blobs, "hashlib", Counting)
    return hashed


def test_a_known_file_version_is_not_hashed_again(store, monkeypatch):
    ref = store.put_bytes(os.urandom(3 * MIB))
    calls = _count_hashing(monkeypatch)
    for _ in range(3):
        assert hashlib.sha256(b"".join(store.open_chunks(ref.sha256))).hexdigest() == ref.sha256
    assert calls == [0, 0, 0]  # nothing hashed


def test_a_same_size_rewrite_after_verification_is_detected(store):
    ref = store.put_bytes(b"original bytes")
    assert store.read_bytes(ref.sha256) == b"original bytes"
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(store.directory / ref.sha256, "r+b") as file:  # same inode, same size
        file.write(b"tampered")
    with pytest.raises(BlobError, match="is corrupt"):
        store.read_bytes(ref.sha256)


def test_a_file_verified_by_reading_is_remembered(tmp_path, monkeypatch):
    first = BlobStore(tmp_path / "blobs")
    ref = first.put_bytes(b"x" * MIB)
    second = BlobStore(tmp_path / "blobs")  # a restarted SuperLink: nothing known
    calls = _count_hashing(monkeypatch)
    second.read_bytes(ref.sha256)
    second.read_bytes(ref.sha256)
    assert calls == [MIB, 0]  # the first read verified it


def test_delete(store):
    ref = store.put_bytes(b"bye")
    assert store.delete(ref.sha256) is True
    assert not store.exists(ref.sha256)


def test_gc_keeps_referenced_and_young_blobs(store):
    keep = store.put_bytes(b"keep")
    old = store.put_bytes(b"old")
    young = store.put_bytes(b"young")
    stale_tmp = store.directory / ".tmp-crashed"
    stale_tmp.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    for name in (keep.sha256, old.sha256, stale_tmp.name):
        os.utime(store.directory / name, (an_hour_ago, an_hour_ago))
    assert store.gc({keep.sha256}, min_age_s=60) == [old.sha256]
    assert _files(store) == sorted([keep.sha256, young.sha256])
    assert store.gc({keep.sha256}) == [young.sha256]
    assert store.list_blobs() == [keep.sha256]


def test_state_gc_keeps_what_rows_reference(state, make_run, make_node, request_meta):
    run = make_run(RunStatus.RUNNING)
    node = make_node()
    body = state.blobs.put_bytes(b"request body")
    orphan = state.blobs.put_bytes(b"never referenced")
    state.queue_message(request_meta(run.run_id, node.node_id), body)
    assert state.gc_blobs() == []  # everything is younger than the default hour
    assert state.gc_blobs(min_age_s=0) == [orphan.sha256]
    assert set(state.blobs.list_blobs()) == {body.sha256, run.bundle_sha256}
    with pytest.raises(InvalidArgument, match="min_age_s must be >= 0"):
        state.gc_blobs(min_age_s=-1)


# -- open_fd: a verified blob as an open file ------------------------------------------------


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _read_fd(fd, size):
    data = os.pread(fd, size + 1, 0)
    os.close(fd)
    return data


def test_open_fd_reads_the_blob_bytes(store):
    data = os.urandom(2 * MIB + 3)
    ref = store.put_bytes(data)
    fd = store.open_fd(ref.sha256)
    try:
        assert os.fstat(fd).st_size == len(data)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        with pytest.raises(OSError, match="Bad file descriptor"):  # read-only
            os.write(fd, b"x")
    except BaseException:
        os.close(fd)
        raise
    assert _read_fd(fd, len(data)) == data


def _fds_of(path) -> int:
    """This process's descriptors open on ``path`` (whatever else it opens or closes)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == str(path)
        except OSError:
            continue
    return count


def _maps_of(path) -> int:
    return sum(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_mapped_chunks_are_read_only_views_of_one_window_at_a_time(store):
    data = os.urandom(2 * MIB + 3)
    ref = store.put_bytes(data)
    path = store.directory / ref.sha256
    chunks = store.mapped_chunks(ref.sha256)
    got = []
    for view in chunks:
        assert view.readonly
        assert _maps_of(path) == 1  # the previous window is gone
        got.append(bytes(view))
    assert [len(chunk) for chunk in got] == [MIB, MIB, 3]
    assert b"".join(got) == data
    assert _maps_of(path) == 0
    assert _fds_of(path) == 0
    assert list(store.mapped_chunks(store.put_bytes(b"").sha256)) == []


def test_mapped_chunks_closed_early_unmap_and_close(store):
    ref = store.put_bytes(b"k" * 3 * MIB)
    chunks = store.mapped_chunks(ref.sha256)
    held = next(chunks)[10:20]
    chunks.close()
    assert bytes(held) == b"k" * 10  # a view still held keeps its window until it goes
    held.release()
    assert _maps_of(store.directory / ref.sha256) == 0
    assert _fds_of(store.directory / ref.sha256) == 0


def test_mapped_chunks_refuse_missing_and_corrupted_blobs_and_bad_sizes(tmp_path):
    first = BlobStore(tmp_path / "blobs")
    ref = first.put_bytes(b"the real model weights")
    (first.directory / ref.sha256).write_bytes(b"some forged weights!!!")
    fresh = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError, match="is corrupt"):
        fresh.mapped_chunks(ref.sha256)
    with pytest.raises(BlobNotFound):
        fresh.mapped_chunks("cd" * 32)
    for size in (0, 1000, True):
        with pytest.raises(InvalidArgument, match="multiple of"):
            fresh.mapped_chunks(ref.sha256, size)
    assert _fds_of(fresh.directory / ref.sha256) == 0


def test_open_fd_of_a_missing_or_misnamed_blob(store):
    before = _open_fds()
    with pytest.raises(BlobNotFound, match=f"blob {'ab' * 32} not found"):
        store.open_fd("ab" * 32)
    with pytest.raises(InvalidArgument):
        store.open_fd("../etc/passwd")
    assert _open_fds() == before


def test_open_fd_refuses_a_blob_corrupted_before_a_restart(tmp_path):
    first = BlobStore(tmp_path / "blobs")
    ref = first.put_bytes(b"the real model weights")
    (first.directory / ref.sha256).write_bytes(b"some forged weights!!!")  # same size
    fresh = BlobStore(tmp_path / "blobs")  # a restarted SuperLink: nothing known
    before = _open_fds()
    with pytest.raises(BlobError, match="is corrupt"):
        fresh.open_fd(ref.sha256)
    assert _open_fds() == before  # neither the descriptor nor its duplicate leaks
    with pytest.raises(BlobError, match="is corrupt"):
        fresh.open_fd(ref.sha256)  # a failed check is not remembered


def test_open_fd_hashes_a_fresh_store_s_blob_once(tmp_path, monkeypatch):
    ref = BlobStore(tmp_path / "blobs").put_bytes(b"y" * MIB)
    fresh = BlobStore(tmp_path / "blobs")
    calls = _count_hashing(monkeypatch)
    assert _read_fd(fresh.open_fd(ref.sha256), MIB) == b"y" * MIB
    assert _read_fd(fresh.open_fd(ref.sha256), MIB) == b"y" * MIB
    assert calls == [MIB]  # the first open verified it, the second trusted that
    assert fresh.read_bytes(ref.sha256) == b"y" * MIB
    assert calls == [MIB, 0]  # and streaming trusts it too


def test_open_fd_does_not_hash_what_the_store_wrote(store, monkeypatch):
    ref = store.put_bytes(b"z" * MIB)
    calls = _count_hashing(monkeypatch)
    for _ in range(3):
        assert _read_fd(store.open_fd(ref.sha256), MIB) == b"z" * MIB
    assert calls == []  # never hashed: the store hashed the bytes as it wrote them


def test_open_fd_hashes_a_new_file_version_again(store, monkeypatch):
    ref = store.put_bytes(b"w" * MIB)
    time.sleep(0.05)  # past the file system's timestamp granularity
    os.utime(store.directory / ref.sha256)  # a touch: same bytes, a new version
    calls = _count_hashing(monkeypatch)
    assert _read_fd(store.open_fd(ref.sha256), MIB) == b"w" * MIB
    assert calls == [MIB]
    time.sleep(0.05)
    with open(store.directory / ref.sha256, "r+b") as file:  # same inode, same size
        file.write(b"tampered")
    before = _open_fds()
    with pytest.raises(BlobError, match="is corrupt"):
        store.open_fd(ref.sha256)
    assert calls == [MIB, MIB]
    assert _open_fds() == before


def test_delete_unreferenced_asks_about_unheld_blobs_only(store):
    held = store.put_stream([b"held"], max_bytes=4, hold=True)
    used, free = store.put_bytes(b"used"), store.put_bytes(b"free")
    asked = []

    def referenced(shas):
        asked.append(set(shas))
        return {used.sha256} & shas

    deleted = store.delete_unreferenced([held.sha256, used.sha256, free.sha256], referenced)
    assert deleted == [free.sha256]
    assert asked == [{used.sha256, free.sha256}]
    assert _files(store) == sorted([held.sha256, used.sha256])


def test_holds_count_and_extra_releases_are_ignored(store):
    first = store.put_stream([b"twice"], max_bytes=5, hold=True)
    store.put_stream([b"twice"], max_bytes=5, durable=False, hold=True)
    store.release(first.sha256)
    assert store.delete_unreferenced([first.sha256], lambda _: set()) == []
    store.release(first.sha256)
    store.release(first.sha256)  # one too many: no error, no negative count
    assert store.delete_unreferenced([first.sha256], lambda _: set()) == [first.sha256]
    again = store.put_stream([b"twice"], max_bytes=5, hold=True)
    assert store.delete_unreferenced([again.sha256], lambda _: set()) == []


def test_a_failed_write_takes_no_hold(store):
    with pytest.raises(BlobTooLarge):
        store.put_stream([b"too long"], max_bytes=3, hold=True)
    ref = store.put_bytes(b"too long")
    assert store.delete_unreferenced([ref.sha256], lambda _: set()) == [ref.sha256]


def test_delete_unreferenced_refuses_a_malformed_name(store):
    with pytest.raises(InvalidArgument):
        store.delete_unreferenced(["../escape"], lambda _: set())


def test_a_writer_storing_the_same_bytes_during_a_delete_keeps_its_blob(store):
    """A commit waits for a delete in progress, then writes the file again."""
    ref = store.put_bytes(b"contended")
    reached_commit = threading.Event()

    def chunks():
        yield b"contended"
        reached_commit.set()  # the writer now commits: it must wait for the delete

    writer = threading.Thread(
        target=lambda: store.put_stream(chunks(), max_bytes=9, durable=False, hold=True)
    )

    def referenced(_shas):
        writer.start()
        assert reached_commit.wait(10)
        time.sleep(0.1)  # let the writer reach the commit
        return set()

    assert store.delete_unreferenced([ref.sha256], referenced) == [ref.sha256]
    writer.join(10)
    assert store.read_bytes(ref.sha256) == b"contended"
    assert store.delete_unreferenced([ref.sha256], lambda _: set()) == []  # and it is held


def _spare_store(tmp_path, spare_bytes=8 * MIB):
    return BlobStore(tmp_path / "spares", spare_bytes=spare_bytes)


def _hand_out(store, ref):
    """Delete a stored body as handed out; return its file's inode."""
    inode = os.stat(store.directory / ref.sha256).st_ino
    assert store.delete_unreferenced([ref.sha256], lambda _: set()) == [ref.sha256]
    assert not store.exists(ref.sha256)
    return inode


def _store_and_hand_out(store, data):
    return _hand_out(store, store.put_stream([data], max_bytes=len(data), durable=False))


@pytest.mark.parametrize("size", [MIB, 3 * MIB, 2 * MIB + 5])
def test_a_handed_out_body_s_file_is_overwritten_by_the_next_body(tmp_path, size):
    store = _spare_store(tmp_path)
    inode = _store_and_hand_out(store, os.urandom(2 * MIB))
    data = os.urandom(size)  # shorter, longer, unaligned: the old tail never shows
    ref = store.put_stream([data[:MIB], data[MIB:]], max_bytes=size, durable=False)
    assert os.stat(store.directory / ref.sha256).st_ino == inode
    assert store.read_bytes(ref.sha256) == data
    assert _files(store) == [ref.sha256]


def test_a_spare_someone_still_reads_is_not_reused(tmp_path):
    store = _spare_store(tmp_path)
    old = os.urandom(2 * MIB)
    ref = store.put_stream([old], max_bytes=len(old), durable=False)
    fd = store.open_fd(ref.sha256)  # e.g. a descriptor handed to a ServerApp
    try:
        inode = _hand_out(store, ref)
        new = os.urandom(2 * MIB)
        fresh = store.put_stream([new], max_bytes=len(new), durable=False)
        assert os.stat(store.directory / fresh.sha256).st_ino != inode
        assert os.pread(fd, len(old) + 1, 0) == old
        assert store.read_bytes(fresh.sha256) == new
        assert _files(store) == [fresh.sha256]  # the shared spare was removed
    finally:
        os.close(fd)


def test_a_mapped_spare_is_not_reused(tmp_path):
    store = _spare_store(tmp_path)
    old = os.urandom(MIB)
    ref = store.put_stream([old], max_bytes=len(old), durable=False)
    with open(store.directory / ref.sha256, "rb") as file:
        view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        inode = _hand_out(store, ref)
        fresh = store.put_stream([os.urandom(MIB)], max_bytes=MIB, durable=False)
        assert os.stat(store.directory / fresh.sha256).st_ino != inode
        assert view[:] == old
    finally:
        view.close()


def test_spares_are_bounded_and_small_or_durable_files_are_not_kept(tmp_path):
    store = _spare_store(tmp_path, spare_bytes=3 * MIB)
    bodies = [os.urandom(2 * MIB), os.urandom(2 * MIB), b"small"]
    refs = [store.put_stream([b], max_bytes=len(b), durable=False) for b in bodies]
    deleted = store.delete_unreferenced([r.sha256 for r in refs], lambda _: set())
    assert deleted == sorted(r.sha256 for r in refs)
    assert len([n for n in _files(store) if n.startswith(".spare-")]) == 1
    durable = store.put_bytes(os.urandom(2 * MIB))  # bundles and artifacts: fresh files
    small = store.put_stream([b"tiny"], max_bytes=4, durable=False)
    assert len([n for n in _files(store) if n.startswith(".spare-")]) == 1
    assert store.read_bytes(durable.sha256) and store.read_bytes(small.sha256) == b"tiny"


def test_without_spare_bytes_a_deleted_body_is_gone(store):
    _store_and_hand_out(store, os.urandom(2 * MIB))
    assert _files(store) == []


def test_gc_removes_idle_spares(tmp_path):
    store = _spare_store(tmp_path)
    _store_and_hand_out(store, os.urandom(2 * MIB))
    assert store.gc(set(), min_age_s=0, now=time.time() + 10) == []
    assert _files(store) == []
    data = os.urandom(MIB)  # the store copes with its spare gone
    ref = store.put_stream([data], max_bytes=MIB, durable=False)
    assert store.read_bytes(ref.sha256) == data


def test_drop_spares_removes_them(tmp_path):
    store = _spare_store(tmp_path)
    _store_and_hand_out(store, os.urandom(2 * MIB))
    store.drop_spares()
    assert _files(store) == []


def test_a_spare_whose_descriptor_is_in_flight_on_a_socket_is_not_reused(tmp_path):
    store = _spare_store(tmp_path)
    old = os.urandom(MIB)
    ref = store.put_stream([old], max_bytes=len(old), durable=False)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        fd = store.open_fd(ref.sha256)
        socket.send_fds(left, [b"ticket"], [fd])
        os.close(fd)  # the only reference left is the one queued on the socket
        inode = _hand_out(store, ref)
        fresh = store.put_stream([os.urandom(MIB)], max_bytes=MIB, durable=False)
        assert os.stat(store.directory / fresh.sha256).st_ino != inode
        _, [received], _, _ = socket.recv_fds(right, 16, 1)
        try:
            assert os.pread(received, MIB + 1, 0) == old
        finally:
            os.close(received)
