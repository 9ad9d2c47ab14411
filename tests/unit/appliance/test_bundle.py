import io
import os
import stat
import zipfile

import pytest

from appliance.bundle import BundleError, build_bundle, bundle_sha256, extract_bundle


def _app(tmp_path):
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pyproject.toml").write_text("[tool.greenhouse.app]\n")
    (app / "pkg" / "__init__.py").write_text("x = 1\n")
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    (app / ".venv" / "lib").mkdir(parents=True)
    (app / ".venv" / "lib" / "big.so").write_bytes(b"\0" * 100)
    return app


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buf.getvalue()


def test_bundle_is_deterministic_and_excludes_caches(tmp_path):
    app = _app(tmp_path)
    first = build_bundle(app)
    os.utime(app / "pkg" / "__init__.py", (0, 0))  # timestamps do not matter
    assert build_bundle(app).sha256 == first.sha256
    names = zipfile.ZipFile(io.BytesIO(first.data)).namelist()
    assert names == ["pkg/__init__.py", "pyproject.toml"]
    (app / "pkg" / "__init__.py").write_text("x = 2\n")
    assert build_bundle(app).sha256 != first.sha256


def test_build_refuses_symlinks_missing_pyproject_and_size(tmp_path):
    app = _app(tmp_path)
    (app / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="link is a symlink"):
        build_bundle(app)
    (app / "link").unlink()
    with pytest.raises(BundleError, match=r"exceeds 10 bytes|more than 10"):
        build_bundle(app, max_bytes=10)
    (app / "pyproject.toml").unlink()
    with pytest.raises(BundleError, match=r"no pyproject\.toml"):
        build_bundle(app)


def test_extract_round_trip(tmp_path):
    bundle = build_bundle(_app(tmp_path))
    out = extract_bundle(bundle.data, tmp_path / "out", expected_sha256=bundle.sha256)
    assert (out / "pkg" / "__init__.py").read_text() == "x = 1\n"
    assert stat.S_IMODE((out / "pkg" / "__init__.py").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):
        extract_bundle(bundle.data, out, expected_sha256=bundle.sha256)


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("evil")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3
    return info


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("../escape.py", b"x")], "escapes the bundle directory"),
        ([("a/../../escape.py", b"x")], "escapes the bundle directory"),
        ([("/etc/cron.d/x", b"x")], "is an absolute path"),
        ([("C:/x", b"x")], "is an absolute path"),
        ([("a\\..\\b", b"x")], "invalid name"),
        ([(_symlink_entry(), b"/etc/passwd")], "is a symlink"),
        ([("a.py", b"1"), ("a.py", b"2")], "duplicate entries"),
    ],
)
def test_extract_refuses_unsafe_entries(tmp_path, entries, match):
    data = _zip(entries)
    with pytest.raises(BundleError, match=match):
        extract_bundle(data, tmp_path / "out", expected_sha256=bundle_sha256(data))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.py").exists()


def test_extract_checks_hash_before_anything(tmp_path):
    bundle = build_bundle(_app(tmp_path))
    with pytest.raises(BundleError, match="bundle hash is"):
        extract_bundle(bundle.data, tmp_path / "out", expected_sha256="0" * 64)
    assert not (tmp_path / "out").exists()


def test_extract_refuses_zip_bombs_and_too_many_files(tmp_path):
    bomb = _zip([("zeros.bin", b"\0" * 5_000_000)])
    with pytest.raises(BundleError, match="unpacks to 5000000 bytes"):
        extract_bundle(
            bomb, tmp_path / "a", expected_sha256=bundle_sha256(bomb), max_bytes=1_000_000
        )
    many = _zip([(f"f{i}", b"") for i in range(20)])
    with pytest.raises(BundleError, match="20 entries, more than 10"):
        extract_bundle(many, tmp_path / "b", expected_sha256=bundle_sha256(many), max_files=10)
    garbage = b"not a zip at all"
    with pytest.raises(BundleError, match="not a valid zip"):
        extract_bundle(garbage, tmp_path / "c", expected_sha256=bundle_sha256(garbage))


def test_extract_refuses_lying_sizes(tmp_path):
    stored = zipfile.ZipInfo("a.txt")
    stored.compress_type = zipfile.ZIP_STORED
    data = bytearray(_zip([(stored, b"hello world")]))
    # Corrupt the stored content: the CRC check or size check must catch it.
    offset = data.index(b"hello world")
    data[offset : offset + 5] = b"HELLO"
    data = bytes(data)
    with pytest.raises(BundleError, match="corrupt"):
        extract_bundle(data, tmp_path / "out", expected_sha256=bundle_sha256(data))
    assert not (tmp_path / "out").exists()
