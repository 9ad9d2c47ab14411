"""A content-addressed blob store on the local file system.

Message bodies and app bundles are spilled here so the SuperLink never holds
nodes x model bytes in memory. A blob's file name is the SHA-256 (hex) of its
bytes, which gives deduplication (the same bytes are stored once) and integrity
(a blob is re-hashed while it is streamed back out).

Guarantees:

* Writes go to a private temp file in the same directory, then are renamed
  atomically to ``<sha256>``: a reader never sees a partial blob. A durable write
  (the default: bundles, artifacts) is fsynced, file and directory, before it
  returns. A transient one (``durable=False``: message bodies, which a restart
  does not need because it fails every run in flight) is left to the page cache;
  if the machine then crashes, the blob may be lost or torn, and reading it back
  raises :class:`BlobError` (after a restart, every blob's first read is hashed),
  never wrong bytes.
* A durable write of bytes already stored replaces the file with its fsynced copy
  (a blob torn by a crash heals); a transient one keeps the stored file, which may
  be durable.
* More than ``max_bytes`` is refused with :class:`BlobTooLarge`; the temp file is
  removed, nothing is stored.
* Streaming paths (:meth:`BlobStore.put_stream`, :meth:`BlobStore.open_chunks`)
  hold one chunk at a time in memory.
* A read is re-hashed unless the store already knows that exact version of the
  file (it wrote the bytes and hashed them, or a full read verified them): same
  inode, size, modification time and change time. Any write to a blob file, or a
  ``touch``, changes the change time, which only root can set back; the memo is
  bounded and in memory. A message body pulled by ten SuperNodes is hashed once.
* A blob can be *held* (``put_stream(..., hold=True)`` until :meth:`BlobStore.release`)
  from the moment it is committed until its writer has recorded a reference to it.
  :meth:`BlobStore.delete_unreferenced` never deletes a held blob, and it takes the
  same lock as a commit, so a blob being re-stored (same bytes) is never deleted
  under its writer.
* With ``spare_bytes`` set, the files of blobs deleted by
  :meth:`BlobStore.delete_unreferenced` (message bodies handed out) are kept as
  spares, up to that many bytes, and a later transient write overwrites one in
  place instead of creating a file. The file's pages stay in the page cache, so a
  round's replies are written into memory the kernel already gave this store
  rather than into fresh pages (measured: several times slower on a virtual
  machine). A spare is reused only if no other open file description of it
  exists, which the kernel checks when it grants a write lease: a descriptor
  handed to another process, a mapping or a read in progress keeps the old bytes
  safe, and the spare is simply removed.
* Files are ``0600`` and the directory ``0700``. Names are validated as SHA-256 hex
  before any path is built, so a caller cannot escape the directory.

Left to others: which blobs are still referenced (the database knows; see
``State.gc_blobs``) and how big a blob may be (the caller's ``max_bytes``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import signal
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.state.errors import BlobError, BlobNotFound, BlobTooLarge, InvalidArgument
from appliance.state.values import BlobRef, check_sha256

__all__ = ["DEFAULT_CHUNK_BYTES", "BlobStore"]

#: Chunk size used when streaming a blob back out.
DEFAULT_CHUNK_BYTES = 1024 * 1024
_TMP_PREFIX = ".tmp-"
_SPARE_PREFIX = ".spare-"
#: Files smaller than this are deleted, not kept as spares (no gain in reusing them).
SPARE_MIN_BYTES = 1024 * 1024
#: How many verified file versions the store remembers.
_VERIFIED_MEMO = 4096
#: A file version: inode, size, modification and change times (ns).
_Version = tuple[int, int, int, int]


class BlobStore:
    """Content-addressed blobs in one directory.

    Args:
        directory: where blobs live; created (``0700``) if missing.
        spare_bytes: how many bytes of deleted message bodies to keep as files to
            overwrite (see the module's guarantees); 0 keeps none.

    Raises:
        BlobError: the directory cannot be created or is not a directory.
    """

    def __init__(self, directory: Path, *, spare_bytes: int = 0) -> None:
        self._dir = Path(directory)
        self._spare_limit = spare_bytes
        self._spares: list[tuple[int, str]] = []  # (size, file name)
        self._spare_total = 0
        self._spares_lock = threading.Lock()  # taken after _holds_lock, never before
        self._verified: OrderedDict[str, _Version] = OrderedDict()
        self._verified_lock = threading.Lock()
        # Holds, and the lock that orders commits against early deletes.
        self._holds: Counter[str] = Counter()
        self._holds_lock = threading.Lock()
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise BlobError(f"cannot prepare blob directory {self._dir}: {exc}") from exc

    @property
    def directory(self) -> Path:
        """The directory holding the blobs."""
        return self._dir

    def _path(self, sha256: str) -> Path:
        return self._dir / check_sha256(sha256)

    def put_stream(
        self,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        max_bytes: int,
        durable: bool = True,
        hold: bool = False,
    ) -> BlobRef:
        """Store the concatenation of ``chunks``.

        MUST hold at most one chunk in memory, MUST refuse more than ``max_bytes``
        (removing the temp file), and MUST store identical bytes only once.

        Args:
            chunks: the bytes, in order (``bytes``, ``bytearray`` or ``memoryview``).
            max_bytes: the most bytes accepted.
            durable: fsync before returning (see the module's guarantees).
            hold: keep the blob from :meth:`delete_unreferenced` until :meth:`release`
                (the caller releases it once its reference is recorded).

        Returns:
            The blob's SHA-256 and size.

        Raises:
            InvalidArgument: ``max_bytes`` is negative or a chunk is not bytes-like.
            BlobTooLarge: more than ``max_bytes`` arrived.
            BlobError: the file system failed.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidArgument(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        fd, tmp = -1, None
        if not durable and max_bytes >= SPARE_MIN_BYTES:
            fd, tmp = self._take_spare(max_bytes)
        if tmp is None:
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self._dir)
            except OSError as exc:
                raise BlobError(f"cannot create a temp file in {self._dir}: {exc}") from exc
            tmp = Path(tmp_name)
        try:
            sha256, size = _write_chunks(fd, chunks, max_bytes, durable)
            self._commit(tmp, sha256, durable, hold)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return BlobRef(sha256=sha256, size=size)

    def _commit(self, tmp: Path, sha256: str, durable: bool, hold: bool) -> None:
        target = self._dir / sha256
        with self._holds_lock:
            try:
                if durable or not target.exists():
                    os.replace(tmp, target)
                    # Its bytes were hashed as they were written (a rename sets the change time).
                    self._remember(sha256, _version(os.stat(target)))
                else:
                    tmp.unlink()
                    os.utime(target)  # a fresh reference: keep it out of an age-based gc
            except OSError as exc:
                raise BlobError(f"cannot store blob {sha256} in {self._dir}: {exc}") from exc
            if hold:
                self._holds[sha256] += 1
        if durable:
            try:
                _fsync_dir(self._dir)
            except OSError as exc:
                if hold:
                    self.release(sha256)
                raise BlobError(f"cannot store blob {sha256} in {self._dir}: {exc}") from exc

    def release(self, sha256: str) -> None:
        """Drop one hold taken by ``put_stream(..., hold=True)`` (extra releases are ignored)."""
        with self._holds_lock:
            if self._holds[sha256] > 1:
                self._holds[sha256] -= 1
            else:
                self._holds.pop(sha256, None)

    def delete_unreferenced(
        self, candidates: Iterable[str], referenced: Callable[[set[str]], set[str]]
    ) -> list[str]:
        """Delete the candidates that nobody holds and ``referenced`` does not name.

        ``referenced`` gets the candidates not held and returns those still in use
        (the database's answer). It is called under the lock every commit takes, so
        a writer storing the same bytes meanwhile is either seen as a holder or
        commits after the delete (and writes the file again).

        Returns:
            The SHA-256 of the blobs deleted, sorted.

        Raises:
            BlobError: the file system failed.
        """
        wanted = {check_sha256(sha) for sha in candidates}
        with self._holds_lock:
            unheld = {sha for sha in wanted if not self._holds[sha]}
            doomed = unheld - referenced(unheld) if unheld else set()
            return sorted(sha for sha in doomed if self._retire(sha))

    def _retire(self, sha256: str) -> bool:
        """Delete a blob, keeping its file as a spare if there is room (under the lock)."""
        path = self._path(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobError(f"cannot delete blob {sha256}: {exc}") from exc
        with self._spares_lock:
            if size >= SPARE_MIN_BYTES and self._spare_total + size <= self._spare_limit:
                name = _SPARE_PREFIX + os.urandom(8).hex()
                try:
                    os.rename(path, self._dir / name)
                except FileNotFoundError:
                    return False
                except OSError as exc:
                    raise BlobError(f"cannot delete blob {sha256}: {exc}") from exc
                self._spares.append((size, name))
                self._spare_total += size
                return True
        return self.delete(sha256)

    def drop_spares(self) -> None:
        """Remove every spare file (e.g. once no run is in flight)."""
        with self._spares_lock:
            spares, self._spares, self._spare_total = self._spares, [], 0
        for _, name in spares:
            with contextlib.suppress(OSError):
                (self._dir / name).unlink()

    def _take_spare(self, max_bytes: int) -> tuple[int, Path | None]:
        """Open a spare for writing (renamed to a temp name), or ``(-1, None)``.

        The smallest spare of at least ``max_bytes`` is taken, else the largest. A
        spare another open file description still reads is removed, not reused.
        """
        while True:
            with self._spares_lock:
                if not self._spares:
                    return -1, None
                fits = [spare for spare in self._spares if spare[0] >= max_bytes]
                spare = min(fits) if fits else max(self._spares)
                self._spares.remove(spare)
                self._spare_total -= spare[0]
            path = self._dir / spare[1]
            tmp = self._dir / (_TMP_PREFIX + spare[1][len(_SPARE_PREFIX) :])
            try:
                os.rename(path, tmp)
                fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue  # removed by a gc meanwhile: try the next one
            if _unshared(fd):
                return fd, tmp
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def put_bytes(self, data: bytes, *, max_bytes: int | None = None) -> BlobRef:
        """Store ``data`` (a convenience for small blobs).

        Raises:
            BlobTooLarge: ``data`` is longer than ``max_bytes``.
            BlobError: the file system failed.
        """
        limit = len(data) if max_bytes is None else max_bytes
        return self.put_stream([data], max_bytes=limit)

    def open_chunks(
        self, sha256: str, chunk_size: int = DEFAULT_CHUNK_BYTES, *, verify: bool = True
    ) -> Iterator[bytes]:
        """Stream a blob back out, ``chunk_size`` bytes at a time.

        The file is opened before this returns, so a missing blob raises here, not on
        the first ``next``. With ``verify`` the bytes are re-hashed as they stream and
        the iterator raises :class:`BlobError` at the end if they do not match.

        Raises:
            InvalidArgument: ``sha256`` is not a SHA-256 hex digest or ``chunk_size < 1``.
            BlobNotFound: no such blob.
            BlobError: the file system failed (also raised by the iterator).
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidArgument(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        src = os.fdopen(self._open(sha256), "rb")
        version = _version(os.fstat(src.fileno()))
        if verify and self._is_verified(sha256, version):
            verify = False
        on_verified = (lambda: self._remember(sha256, version)) if verify else None
        return _iter_file(src, sha256, chunk_size, verify, on_verified)

    def open_fd(self, sha256: str) -> int:
        """Open a blob read-only and return the descriptor (the caller closes it).

        The bytes are hashed first unless the store already knows this version of
        the file (see the module's guarantees), so the descriptor reads verified bytes.

        Raises:
            InvalidArgument: ``sha256`` is not a SHA-256 hex digest.
            BlobNotFound: no such blob.
            BlobError: the file system failed or the bytes do not match the name.
        """
        fd = self._open(sha256)
        try:
            try:
                version = _version(os.fstat(fd))
                src = None if self._is_verified(sha256, version) else os.fdopen(os.dup(fd), "rb")
            except OSError as exc:
                raise BlobError(f"cannot read blob {sha256}: {exc}") from exc
            if src is not None:  # _iter_file closes it
                for _ in _iter_file(src, sha256, DEFAULT_CHUNK_BYTES, True, None):
                    pass
                self._remember(sha256, version)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def mapped_chunks(
        self, sha256: str, chunk_size: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[memoryview]:
        """Stream a blob's verified bytes as read-only views of its file, mapped rather
        than read: sending from a view copies the bytes once, straight from the page
        cache, where a read copies them into a buffer first.

        One window of ``chunk_size`` bytes is mapped at a time, and each view is valid
        until the next is asked for: however many streams send the same blob, each
        maps one window, not the whole file. The file is opened (and verified)
        before this returns, so a missing or corrupt blob raises here.

        Raises:
            InvalidArgument: ``sha256`` is not a SHA-256 hex digest, or ``chunk_size``
                is not a positive multiple of the page size.
            BlobNotFound: no such blob.
            BlobError: the file system failed or the bytes do not match the name.
        """
        if (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, int)
            or chunk_size < 1
            or chunk_size % mmap.ALLOCATIONGRANULARITY
        ):
            raise InvalidArgument(
                f"chunk_size must be a positive multiple of {mmap.ALLOCATIONGRANULARITY}, "
                f"got {chunk_size!r}"
            )
        fd = self.open_fd(sha256)
        return _map_windows(fd, sha256, chunk_size)

    def _remember(self, sha256: str, version: _Version) -> None:
        with self._verified_lock:
            self._verified[sha256] = version
            self._verified.move_to_end(sha256)
            while len(self._verified) > _VERIFIED_MEMO:
                self._verified.popitem(last=False)

    def _is_verified(self, sha256: str, version: _Version) -> bool:
        with self._verified_lock:
            return self._verified.get(sha256) == version

    def read_bytes(self, sha256: str) -> bytes:
        """Return a whole blob (only for blobs known to be small).

        Raises:
            BlobNotFound: no such blob.
            BlobError: the file system failed or the bytes do not match the name.
        """
        return b"".join(self.open_chunks(sha256))

    def size(self, sha256: str) -> int:
        """Return a blob's size in bytes.

        Raises:
            BlobNotFound: no such blob.
        """
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None
        except OSError as exc:
            raise BlobError(f"cannot stat blob {sha256}: {exc}") from exc

    def exists(self, sha256: str) -> bool:
        """Whether a blob with this SHA-256 is stored."""
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        """Delete a blob; return whether it existed.

        Raises:
            BlobError: the file system failed.
        """
        try:
            self._path(sha256).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobError(f"cannot delete blob {sha256}: {exc}") from exc
        return True

    def list_blobs(self) -> list[str]:
        """The SHA-256 of every stored blob, sorted."""
        return sorted(p.name for p in self._dir.iterdir() if _is_blob_name(p.name))

    def gc(self, keep: set[str], *, min_age_s: float = 0.0, now: float | None = None) -> list[str]:
        """Delete blobs not in ``keep`` (and stale temp files).

        A blob or temp file modified less than ``min_age_s`` ago is kept, so a blob
        stored but not yet referenced by a row survives a concurrent gc.

        Returns:
            The deleted blobs' SHA-256, sorted.

        Raises:
            BlobError: the file system failed.
        """
        cutoff = (time.time() if now is None else now) - min_age_s
        deleted: list[str] = []
        try:
            for path in self._dir.iterdir():
                name = path.name
                is_blob = _is_blob_name(name)
                if not (is_blob or name.startswith((_TMP_PREFIX, _SPARE_PREFIX))) or name in keep:
                    continue
                try:
                    if path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                if is_blob:
                    deleted.append(name)
        except OSError as exc:
            raise BlobError(f"blob gc in {self._dir} failed: {exc}") from exc
        return sorted(deleted)

    def _open(self, sha256: str) -> int:
        path = self._path(sha256)
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None
        except OSError as exc:
            raise BlobError(f"cannot open blob {sha256}: {exc}") from exc


def _is_blob_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _write_chunks(
    fd: int, chunks: Iterable[bytes | bytearray | memoryview], max_bytes: int, durable: bool
) -> tuple[str, int]:
    """Write ``chunks`` to ``fd`` unbuffered; errors of the iterator itself propagate as-is."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb", buffering=0) as out:
        for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidArgument(f"blob chunks must be bytes, got {type(chunk).__name__}")
            size += len(chunk)
            if size > max_bytes:
                raise BlobTooLarge(f"blob exceeds the limit of {max_bytes} bytes; nothing stored")
            digest.update(chunk)
            try:
                _write_all(out, memoryview(chunk))
            except OSError as exc:
                raise BlobError(f"cannot write blob data: {exc}") from exc
        try:
            os.ftruncate(out.fileno(), size)  # a reused spare may have been longer
        except OSError as exc:
            raise BlobError(f"cannot write blob data: {exc}") from exc
        if durable:
            try:
                os.fsync(out.fileno())
            except OSError as exc:
                raise BlobError(f"cannot flush blob data: {exc}") from exc
    return digest.hexdigest(), size


def _write_all(out: BinaryIO, data: memoryview) -> None:
    while data:
        written = out.write(data)
        data = data[written:]


def _iter_file(
    src: BinaryIO,
    sha256: str,
    chunk_size: int,
    verify: bool,
    on_verified: Callable[[], None] | None,
) -> Iterator[bytes]:
    digest = hashlib.sha256()
    try:
        with src:
            while chunk := src.read(chunk_size):
                if verify:
                    digest.update(chunk)
                yield chunk
    except OSError as exc:
        raise BlobError(f"cannot read blob {sha256}: {exc}") from exc
    if verify and digest.hexdigest() != sha256:
        raise BlobError(f"blob {sha256} is corrupt: its bytes hash to {digest.hexdigest()}")
    if on_verified is not None:
        on_verified()


def _map_windows(fd: int, sha256: str, chunk_size: int) -> Iterator[memoryview]:
    try:
        size = os.fstat(fd).st_size
        for start in range(0, size, chunk_size):
            try:
                region = mmap.mmap(
                    fd, min(chunk_size, size - start), access=mmap.ACCESS_READ, offset=start
                )
            except (OSError, ValueError) as exc:
                raise BlobError(f"cannot map blob {sha256}: {exc}") from exc
            view = memoryview(region)
            try:
                yield view
            finally:
                with contextlib.suppress(BufferError):  # a view still held: unmapped with it
                    view.release()
                    region.close()
    finally:
        os.close(fd)


def _unshared(fd: int) -> bool:
    """Whether ``fd`` is the file's only open file description (Linux write leases).

    The lease is dropped at once; while held, an ``open`` by another process would
    wait for it and signal this one, so the signal is set to one that is ignored by
    default. Where leases are unavailable the answer is no.
    """
    try:
        if hasattr(fcntl, "F_SETSIG"):
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except (OSError, AttributeError):
        return False
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _version(st: os.stat_result) -> _Version:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
