"""Helpers for the site-policy tests: policy files, app directories, requests and replies."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from appliance import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from appliance.supernode.policy import SitePolicy, parse_policy


def policy(text: str = "", *, base_dir: Path | None = None) -> SitePolicy:
    return parse_policy(textwrap.dedent(text), base_dir=base_dir)


def write_policy(directory: Path, text: str, name: str = "site.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    return path


def make_app(directory: Path, name: str = "app", body: str = "x = 1\n") -> Path:
    app = directory / name
    (app / "pkg").mkdir(parents=True)
    (app / "pyproject.toml").write_text("[tool.greenhouse.app]\nclientapp = 'pkg:app'\n")
    (app / "pkg" / "__init__.py").write_text(body)
    return app


def model() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, np.float32)})


def request(message_type: str = "train", content: RecordDict | None = None) -> Message:
    if content is None:
        content = RecordDict({"arrays": model(), "config": ConfigRecord({"lr": 0.1})})
    return Message(content, dst_node_id=7, message_type=message_type)


def train_reply(msg: Message, **extra: object) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v + 1 for k, v in msg.content["arrays"].items()}),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    for name, record in extra.items():
        content[name] = record
    return Message(content, reply_to=msg)
