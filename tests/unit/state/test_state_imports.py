"""``appliance.state`` is storage only: no gRPC, no SuperLink/SuperNode code, no pickle."""

import ast
from pathlib import Path

import pytest

import appliance.state

PACKAGE = Path(appliance.state.__file__).parent
FORBIDDEN = ("grpc", "appliance.superlink", "appliance.supernode", "appliance.cli", "pickle")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_state_is_storage_only(path):
    for name in _imports(path):
        assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"


def test_public_api_is_exported():
    for name in appliance.state.__all__:
        assert hasattr(appliance.state, name), name
    assert not [n for n in appliance.state.__all__ if n.startswith("_")]
