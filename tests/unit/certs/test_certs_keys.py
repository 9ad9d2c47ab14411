"""Private key storage: 0600 on disk, permission and passphrase checks on load."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certs import KeyFileError, KeyPermissionError, PassphraseError
from certs.keys import (
    check_key_permissions,
    generate_signing_key,
    generate_tls_key,
    is_encrypted_key,
    load_private_key,
    load_signing_key,
    load_tls_key,
    write_private_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_keys_are_0600_and_load_back(tmp_path: Path) -> None:
    key = generate_tls_key()
    path = write_private_key(tmp_path / "tls.key", key)
    assert _mode(path) == 0o600
    assert load_tls_key(path).private_numbers() == key.private_numbers()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_private_key(tmp_path / "tls.key", generate_tls_key())
    os.chmod(path, mode)
    expected = rf"accessible by group or others \(mode 0{mode:o}\).*chmod 600"
    with pytest.raises(KeyPermissionError, match=expected):
        load_private_key(path)


def test_permission_error_message_has_no_key_material(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "tls.key", generate_tls_key())
    os.chmod(path, 0o644)
    with pytest.raises(KeyPermissionError) as info:
        check_key_permissions(path)
    assert "BEGIN" not in str(info.value)
    assert str(path) in str(info.value)


def test_existing_key_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "k.key", generate_signing_key())
    with pytest.raises(KeyFileError, match="already exists"):
        write_private_key(path, generate_signing_key())
    write_private_key(path, generate_signing_key(), overwrite=True)
    assert _mode(path) == 0o600


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "ca.key", generate_tls_key(), passphrase=b"correct horse")
    assert is_encrypted_key(path)
    assert "ENCRYPTED" in path.read_text()
    with pytest.raises(PassphraseError, match="passphrase is required"):
        load_private_key(path)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_private_key(path, passphrase=b"battery staple")
    assert load_tls_key(path, passphrase=b"correct horse") is not None


def test_missing_garbage_and_wrong_type_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_private_key(tmp_path / "absent.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="is not a PEM private key"):
        load_private_key(garbage)
    ed = write_private_key(tmp_path / "ed.key", generate_signing_key())
    with pytest.raises(KeyFileError, match="is not an ECDSA key"):
        load_tls_key(ed)
    ec_key = write_private_key(tmp_path / "ec.key", generate_tls_key())
    with pytest.raises(KeyFileError, match="is not an Ed25519 signing key"):
        load_signing_key(ec_key)


def test_directory_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        check_key_permissions(tmp_path)
