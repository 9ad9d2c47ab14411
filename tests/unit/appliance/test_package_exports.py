"""The ``appliance`` package's public names: all resolve, and none loads eagerly."""

import importlib
import subprocess
import sys

import pytest

import appliance


@pytest.mark.parametrize("name", appliance.__all__)
def test_every_public_name_resolves_to_its_home_module(name):
    home = importlib.import_module(appliance._HOMES[name])
    assert getattr(appliance, name) is getattr(home, name)
    assert name in dir(appliance)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = appliance.Nope  # type: ignore[attr-defined]


def test_the_clientapp_entry_confines_itself_before_numpy_starts_threads():
    # A user namespace can only be entered by a single-threaded process, and
    # numpy's thread pool starts at import: the entry module must not load it.
    code = (
        "import os, sys\n"
        "import appliance.supernode.clientapp_entry\n"
        "print(len(os.listdir('/proc/self/task')), 'numpy' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["1", "False"]
