"""The audit package's own layering (STYLE.md §1): producing, storing, verifying apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import audit

PACKAGE = Path(audit.__file__).resolve().parent


def audit_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "audit" or n.startswith("audit.")}


def test_verifier_imports_only_the_pure_modules():
    assert audit_imports("verify") <= {
        "audit.tree",
        "audit.checkpoint",
        "audit.entry",
        "audit.errors",
        "audit.segment",
    }


@pytest.mark.parametrize(
    "module",
    [
        "tree",
        "canonical",
        "entry",
        "note",
        "checkpoint",
        "verify",
        "segment",
        "chain",
        "witness",
        "reconcile",
    ],
)
def test_pure_core_has_no_database_or_clock(module):
    source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "sqlalchemy" not in imported
    assert "datetime.now" not in source and "time.time" not in source


def test_only_log_inserts_entries():
    for path in PACKAGE.glob("*.py"):
        if path.name != "log.py":
            assert "insert(audit_entries" not in path.read_text(encoding="utf-8"), path.name


def test_offline_checks_never_touch_a_database():
    for module in ("chain", "reconcile", "witness"):
        assert "audit.schema" not in audit_imports(module), module
        assert "audit.log" not in audit_imports(module), module


def test_only_archive_deletes_and_only_schema_drops_triggers():
    for path in PACKAGE.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        if path.name not in ("archive.py", "schema.py"):
            assert "unsafe_delete_below" not in source, path.name
        if path.name != "schema.py":
            assert "DROP TRIGGER" not in source and "delete(" not in source, path.name


def test_public_api_is_complete():
    for name in audit.__all__:
        assert hasattr(audit, name), name
