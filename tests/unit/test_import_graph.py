"""Architecture rules from DESIGN.md, checked on the source (no imports executed)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ["secagg", "dp", "audit", "certs"]
PRODUCT = ["appliance", *LIBRARIES]
# What the leaf layer is: the only appliance modules a library may import.
LEAF = {
    "appliance",
    "appliance.records",
    "appliance.message",
    "appliance.context",
    "appliance.clientapp",
    "appliance.serverapp",
    "appliance.grid",
    "appliance.errors",
    "appliance.logs",
    "appliance.strategy",
    "appliance.strategy.aggregate",
    "appliance.strategy.base",
    "appliance.strategy.fedavg",
    "appliance.strategy.checkpoint",
    "appliance.strategy.fedopt",
    "appliance.strategy.fedprox",
    "appliance.strategy.robust",
    "appliance.strategy.robust_rules",
    "appliance.strategy.sampling",
    "appliance.secure_aggregation",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if not p.name.endswith("_pb2.py"))


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_import_only_the_leaf_layer(library):
    others = [lib for lib in LIBRARIES if lib != library]
    for path in _sources(library):
        rel = path.relative_to(ROOT)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "appliance":
                assert name in LEAF, f"{rel} imports {name}, outside the leaf layer"
            assert top not in others, f"{rel} imports {name}: libraries stay independent"


def test_leaf_layer_does_not_import_runtime():
    for module in LEAF - {"appliance"}:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        for name in _imports(path):
            if name.startswith("appliance."):
                assert name in LEAF, f"leaf module {module} imports {name}"


def test_only_the_codec_imports_message_protobuf():
    for package in PRODUCT:
        for path in _sources(package):
            rel = path.relative_to(ROOT).as_posix()
            if "appliance.proto.message_pb2" in _imports(path):
                assert rel == "appliance/wire.py", f"{rel} imports the message protobuf code"


def test_no_pickle_or_eval_in_product_code():
    for package in PRODUCT:
        for path in _sources(package):
            imports = _imports(path)
            assert not imports & {
                "pickle",
                "cPickle",
                "dill",
                "cloudpickle",
                "marshal",
                "shelve",
            }, path
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in {"eval", "exec"}, f"{path}: {node.func.id}()"
