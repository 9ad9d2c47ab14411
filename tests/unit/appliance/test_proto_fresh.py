"""The committed protobuf code must match a fresh generation (``make proto``)."""

from pathlib import Path

import pytest

from appliance.proto import generate

grpc_tools = pytest.importorskip("grpc_tools", reason="needs the dev extra (grpcio-tools)")


def test_generated_code_is_fresh(tmp_path: Path):
    fresh = generate.generate(tmp_path)
    committed_dir = generate.PROTO_DIR
    committed = sorted(
        p.name for p in committed_dir.iterdir() if p.name.endswith(generate.GENERATED_SUFFIXES)
    )
    assert sorted(p.name for p in fresh) == committed, "run `make proto`"
    for path in fresh:
        assert path.read_bytes() == (committed_dir / path.name).read_bytes(), (
            f"{path.name} is stale: run `make proto` and commit the result"
        )
