"""Resource limits for a run's ClientApp subprocess, applied by the child itself.

What this module enforces, on Linux (the appliance's deployment platform):

* **memory** -- ``RLIMIT_AS`` (virtual address space) of ``memory_bytes``: an
  allocation past it fails (``MemoryError`` in Python; native code may abort).
  It counts reserved, not resident, memory, so it must leave room for the
  interpreter, numpy and thread stacks (a few hundred MB).
* **CPU time** -- the soft ``RLIMIT_CPU``: past it the kernel sends ``SIGXCPU``
  every CPU second, which kills the process (Python keeps the default action).
  The limit counts the process's whole life; :func:`grant_cpu_seconds` re-arms
  it before each message, making it per message. The hard limit is left as the
  SuperNode's own (normally unlimited), because only a privileged process may
  raise a hard limit again: an app that ignores ``SIGXCPU`` is stopped by the
  wall-time limit instead.
* **no core dumps** -- ``RLIMIT_CORE = 0``, always: a core file would copy the
  app's memory, site data included, onto disk.
* **no network** (``isolate_network``) -- the process enters a new user and network
  namespace (``unshare(CLONE_NEWUSER | CLONE_NEWNET)``, no privileges needed where
  the kernel allows unprivileged user namespaces) with its own uid/gid mapped, so
  files keep their owner. The new namespace has only a loopback interface, and
  it is down: no socket can reach anything, not even the SuperNode. Where the
  kernel refuses, the ClientApp does not start (fail closed);
  :func:`check_network_isolation` says so at SuperNode start.
* **hidden files** (``hide``/``keep``) -- in a mount namespace of its own
  (``CLONE_NEWNS``, in the same new user namespace), each hidden file is covered by
  ``/dev/null`` and each hidden directory by an empty read-only tmpfs, except the
  ``keep`` directories under it, bound back in place. The SuperNode hides its TLS
  and signing keys and its data directory (site audit log and keys, ledger,
  approval book, other runs), keeping only the run's own directory: app code cannot
  read the node's keys or rewrite the site's books. Mounts are private to the
  namespace; the SuperNode and other processes see the files as they are.

Where they are applied: :func:`apply_limits` runs first thing in the freshly
exec'd ClientApp interpreter (``clientapp_entry``), before any app code is
imported, while that process is still single-threaded (``unshare`` of a user
namespace requires it). Not in a ``preexec_fn``: the SuperNode is multi-threaded
(gRPC), and running Python between ``fork`` and ``exec`` there can deadlock or
abort the child. Hard limits lowered by the child cannot be raised again by the
app; the soft CPU limit is moved only by the SuperNode (``prlimit``).

What it leaves to others: wall time per message (the parent's timeout in
``ClientAppProcess.handle``); the scrubbed environment and private working
directory (``clientapp_runner``); a read-only data path and syscall filtering
(the deployment: a read-only volume, systemd ``ReadOnlyPaths=``,
``SystemCallFilter=``, the container's seccomp profile). Python cannot drop
network access portably; on hosts without user namespaces use the unit-level
controls described in ``docs/site-policy.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import ApplianceError

__all__ = [
    "LimitError",
    "ResourceLimits",
    "apply_limits",
    "check_network_isolation",
    "cpu_seconds_used",
    "grant_cpu_seconds",
    "network_isolation_available",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MIN_MEMORY_BYTES = 64 * 2**20


class LimitError(ApplianceError):
    """A resource limit cannot be applied on this host (names the limit and the cause)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    """Limits for one ClientApp process. ``None`` leaves a resource unlimited."""

    memory_bytes: int | None
    cpu_seconds: int | None
    isolate_network: bool
    #: Absolute paths the process must not see (files read as empty, directories empty).
    hide: tuple[str, ...] = ()
    #: Directories under a hidden one that stay as they are (the run's own directory).
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hide", tuple(self.hide))  # lists, from JSON
        object.__setattr__(self, "keep", tuple(self.keep))
        for path in (*self.hide, *self.keep):
            if not os.path.isabs(path):
                raise ValueError(f"hidden and kept paths must be absolute, got {path!r}")
        if self.memory_bytes is not None and self.memory_bytes < MIN_MEMORY_BYTES:
            raise ValueError(f"memory_bytes must be >= {MIN_MEMORY_BYTES}, got {self.memory_bytes}")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be >= 1, got {self.cpu_seconds}")


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise LimitError(f"isolation needs Linux namespaces; this is {sys.platform}")
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _libc_unshare() -> Callable[[int], int]:
    unshare: Callable[[int], int] = _libc().unshare
    return unshare


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    def arg(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if _libc().mount(arg(source), arg(target), arg(fstype), flags, arg(data)) != 0:
        errno = ctypes.get_errno()
        raise LimitError(f"cannot hide {target}: mount failed: {os.strerror(errno)}")


def _hide_paths(hide: tuple[str, ...], keep: tuple[str, ...]) -> None:
    """Cover ``hide`` (in a fresh mount namespace) but for the ``keep`` directories."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, "")  # nothing leaks to the host
    files = [p for p in hide if os.path.lexists(p) and not os.path.isdir(p)]
    directories = [p for p in hide if os.path.isdir(p)]
    for path in files:  # first: a file may lie in a hidden directory
        _mount("/dev/null", path, None, _MS_BIND, "")
    for directory in directories:
        under = [k for k in keep if os.path.commonpath([k, directory]) == directory != k]
        held = [(k, os.open(k, os.O_PATH | os.O_DIRECTORY)) for k in under if os.path.isdir(k)]
        try:
            flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            _mount("tmpfs", directory, "tmpfs", flags, "size=64k,mode=0700")
            for path, fd in held:
                os.makedirs(path, mode=0o700, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, "")
            _mount(None, directory, None, _MS_REMOUNT | _MS_RDONLY | flags, "")
        finally:
            for _, fd in held:
                os.close(fd)


def _isolation_steps() -> tuple[Callable[[int], int], tuple[tuple[str, bytes], ...]]:
    """The unshare call and the /proc writes that map our own uid/gid (computed before any fork)."""
    uid, gid = os.getuid(), os.getgid()
    writes = (
        ("/proc/self/setgroups", b"deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1".encode()),
        ("/proc/self/gid_map", f"{gid} {gid} 1".encode()),
    )
    return _libc_unshare(), writes


def _enter_isolated_namespace(
    unshare: Callable[[int], int],
    writes: tuple[tuple[str, bytes], ...],
    flags: int = CLONE_NEWUSER | CLONE_NEWNET,
) -> int:
    """Unshare user (+net, +mount) namespaces and map ids (fork-safe). 0 on success, else errno."""
    if unshare(flags) != 0:
        return ctypes.get_errno() or 1
    for path, data in writes:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            return exc.errno or 1
    return 0


def _at_most(value: int, hard: int) -> int:
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def apply_limits(limits: ResourceLimits) -> None:
    """Apply ``limits`` to the calling process (the ClientApp interpreter, before the app).

    Order matters: the namespace first (``unshare`` of a user namespace needs a
    single-threaded process, and nothing else should happen if it fails), then
    CPU and core limits, and the address-space limit last.

    Raises:
        LimitError: a limit cannot be applied (names which, and why).
    """
    flags = CLONE_NEWUSER
    if limits.isolate_network:
        flags |= CLONE_NEWNET
    if limits.hide:
        flags |= CLONE_NEWNS
    if flags != CLONE_NEWUSER:
        error = _enter_isolated_namespace(*_isolation_steps(), flags)
        if error:
            what = "the network" if limits.isolate_network else "the node's files"
            raise LimitError(f"cannot isolate {what}: {os.strerror(error)}")
        if limits.hide:
            cwd = os.getcwd()
            _hide_paths(limits.hide, limits.keep)
            os.chdir(cwd)  # the working directory as mounted now (a kept one)
    settings: list[tuple[str, int, tuple[int, int]]] = [("core", resource.RLIMIT_CORE, (0, 0))]
    if limits.cpu_seconds is not None:
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]  # kept: raising it needs privilege
        settings.append(("cpu", resource.RLIMIT_CPU, (_at_most(limits.cpu_seconds, hard), hard)))
    if limits.memory_bytes is not None:
        cap = _at_most(limits.memory_bytes, resource.getrlimit(resource.RLIMIT_AS)[1])
        settings.append(("memory", resource.RLIMIT_AS, (cap, cap)))
    for name, which, values in settings:
        try:
            resource.setrlimit(which, values)
        except (OSError, ValueError) as exc:
            raise LimitError(f"cannot set the {name} limit to {values[0]}: {exc}") from None


def check_network_isolation() -> None:
    """Probe, once at SuperNode start, whether ``network = "none"`` can be enforced here.

    Forks a child that tries exactly what :func:`apply_limits` does and exits.

    Raises:
        LimitError: the kernel refuses (with the errno and what to do about it).
    """
    unshare, writes = _isolation_steps()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        os._exit(_enter_isolated_namespace(unshare, writes))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        cause = os.strerror(code) if code > 0 else f"killed by signal {-code}"
        raise LimitError(
            f"[execution] network = 'none' cannot be enforced on this host ({cause}): "
            "unprivileged user namespaces are disabled (see user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone, or a seccomp profile). Enable them, run the "
            "SuperNode where they are allowed, or set network = 'allowed' and restrict the "
            "service instead (docs/site-policy.md)"
        )


def network_isolation_available() -> bool:
    """Whether ``network = "none"`` can be enforced here (:func:`check_network_isolation`
    without the explanation)."""
    try:
        check_network_isolation()
    except LimitError:
        return False
    return True


def cpu_seconds_used(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc``.

    Raises:
        LimitError: the process is gone or ``/proc`` is unavailable.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError as exc:
        raise LimitError(f"cannot read the CPU time of process {pid}: {exc.strerror}") from None
    # Fields after the command name (which may hold spaces) start after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def grant_cpu_seconds(pid: int, cpu_seconds: int) -> None:
    """Allow process ``pid`` ``cpu_seconds`` more CPU time from now (call before each message).

    Only the soft limit moves (an unprivileged parent may do that), never above
    the hard limit.

    Raises:
        LimitError: the platform has no ``prlimit`` or the process is gone.
    """
    if not hasattr(resource, "prlimit"):
        raise LimitError(f"per-message CPU limits need prlimit (Linux); this is {sys.platform}")
    if cpu_seconds < 1:
        raise ValueError(f"cpu_seconds must be >= 1, got {cpu_seconds}")
    soft = math.ceil(cpu_seconds_used(pid)) + cpu_seconds
    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_CPU)
        resource.prlimit(pid, resource.RLIMIT_CPU, (_at_most(soft, hard), hard))
    except (OSError, ValueError) as exc:
        raise LimitError(f"cannot set the CPU limit of process {pid}: {exc}") from None
