"""App bundles: the code of a run, as one deterministic zip identified by its SHA-256.

The same source gives the same bytes (sorted entries, fixed timestamps and
permissions, no caches or virtual environments), so the bundle hash identifies the
app everywhere: run records, site policy and the audit log. Bundles carry code, not
dependencies.

Extraction is where untrusted bytes meet the file system: :func:`extract_bundle`
checks the hash first, then refuses absolute paths, ``..`` components, symlinks and
other special entries, too many files and too many bytes (zip bombs) before writing
anything outside a fresh directory.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from appliance.errors import ApplianceError

__all__ = [
    "DEFAULT_MAX_BUNDLE_BYTES",
    "Bundle",
    "BundleError",
    "build_bundle",
    "bundle_sha256",
    "extract_bundle",
]

DEFAULT_MAX_BUNDLE_BYTES = 64 * 2**20
DEFAULT_MAX_FILES = 10_000
#: Directory names never bundled (environments, caches, VCS).
EXCLUDED_DIRS = frozenset(
    {
        ".venv",
        "venv",
        "__pycache__",
        ".git",
        ".hg",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        "build",
        "dist",
        "node_modules",
        ".tox",
        ".eggs",
    }
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(ApplianceError):
    """A bundle cannot be built, or received bytes are not a safe, matching bundle."""


@dataclass(frozen=True)
class Bundle:
    """A built bundle: its bytes and their SHA-256 (hex)."""

    data: bytes = field(repr=False)
    sha256: str

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)


def bundle_sha256(data: bytes) -> str:
    """The hex SHA-256 that identifies a bundle."""
    return hashlib.sha256(data).hexdigest()


def _bundled_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(
            part in EXCLUDED_DIRS or part.endswith(EXCLUDED_SUFFIXES) for part in relative.parts
        ):
            continue
        if path.is_symlink():
            raise BundleError(f"{relative} is a symlink; bundles hold regular files only")
        if path.is_file():
            files.append(path)
    return files


def build_bundle(app_dir: str | Path, *, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Bundle:
    """Zip ``app_dir`` deterministically.

    Raises:
        BundleError: no ``pyproject.toml``, a symlink inside, or more than ``max_bytes``.
    """
    root = Path(app_dir).resolve()
    if not (root / "pyproject.toml").is_file():
        raise BundleError(f"{app_dir}: no pyproject.toml (is this an app directory?)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in _bundled_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_FIXED_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the permission bits are meaningful
            archive.writestr(info, path.read_bytes())
            if buffer.tell() > max_bytes:
                raise BundleError(f"{app_dir}: bundle exceeds {max_bytes} bytes")
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise BundleError(f"{app_dir}: bundle is {len(data)} bytes, more than {max_bytes}")
    return Bundle(data=data, sha256=bundle_sha256(data))


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or "\\" in name or "\x00" in name:
        raise BundleError(f"bundle entry {name!r} has an invalid name")
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise BundleError(f"bundle entry {name!r} is an absolute path")
    if any(part in ("..", "") for part in path.parts) or name.startswith("./"):
        raise BundleError(f"bundle entry {name!r} escapes the bundle directory")
    return path


def _check_member(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, or None for a directory entry; raises if unsafe."""
    path = _safe_member_path(info.filename.rstrip("/") if info.is_dir() else info.filename)
    mode = info.external_attr >> 16
    if info.is_dir():
        return None
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: written without Unix mode bits
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
        raise BundleError(f"bundle entry {info.filename!r} is {kind}")
    if info.flag_bits & 0x1:
        raise BundleError(f"bundle entry {info.filename!r} is encrypted")
    return path


def extract_bundle(
    data: bytes,
    destination: str | Path,
    *,
    expected_sha256: str,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Verify ``data`` against ``expected_sha256`` and unpack it into ``destination``.

    ``destination`` must not exist yet (it is created with mode 0700). Nothing is
    written unless every entry passes the checks.

    Raises:
        BundleError: hash mismatch, unsafe entry, too many files or bytes, or not a zip.
    """
    found = bundle_sha256(data)
    if found != expected_sha256:
        raise BundleError(f"bundle hash is {found}, expected {expected_sha256}")
    if len(data) > max_bytes:
        raise BundleError(f"bundle is {len(data)} bytes, more than {max_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(f"bundle is not a valid zip: {exc}") from None
    with archive:
        members = archive.infolist()
        if len(members) > max_files:
            raise BundleError(f"bundle has {len(members)} entries, more than {max_files}")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise BundleError(f"bundle unpacks to {total} bytes, more than {max_bytes}")
        checked = [(m, _check_member(m)) for m in members]
        if len({str(p) for _, p in checked if p}) != sum(1 for _, p in checked if p):
            raise BundleError("bundle has duplicate entries")
        root = Path(destination)
        root.mkdir(mode=0o700, parents=False, exist_ok=False)
        try:
            for info, relative in checked:
                if relative is not None:
                    _write_member(archive, info, root.joinpath(*relative.parts))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return root


def _write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with archive.open(info) as source:
            content = source.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"bundle entry {info.filename!r} is corrupt: {exc}") from None
    if len(content) != info.file_size:
        raise BundleError(f"bundle entry {info.filename!r} does not match its declared size")
    target.write_bytes(content)
    target.chmod(0o600)
