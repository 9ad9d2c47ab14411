"""Regenerate the committed protobuf code: ``python -m appliance.proto.generate``.

Needs the ``dev`` extra (``grpcio-tools``). The tests compare the committed files
with a fresh generation, so a stale file fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """Every ``.proto`` file under ``appliance/proto``."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generate Python modules, type stubs and gRPC stubs into ``out_dir``.

    ``out_dir`` plays the role of the repository root: files land in
    ``out_dir/appliance/proto/``. Returns the generated files.
    """
    from grpc_tools import protoc  # dev-only dependency

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in proto_files()),
    ]
    target = out_dir / "appliance" / "proto"
    target.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    for grpc_module in target.glob("*_pb2_grpc.py"):
        if "Stub" not in grpc_module.read_text():  # a .proto without services
            grpc_module.unlink()
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    written = generate(ROOT)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
