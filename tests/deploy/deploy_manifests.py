"""Readers for the files in deploy/: Dockerfile, compose, Kubernetes, systemd units.

Small on purpose: each reads just enough structure for the tests to assert on.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REQUIRE_TOOLS = os.environ.get("GREENHOUSE_REQUIRE_DEPLOY_TOOLS") == "1"
#: Where the image and every manifest expect the site's data (deploy/site.example.toml).
#: The health service's address in every container and unit (the image's HEALTHCHECK).
HEALTH = "127.0.0.1:9094"
#: The uid and gid of the image's user, fixed so volumes and fsGroup can name it.
UID = "10001"
SITE_DATA = tomllib.loads((DEPLOY / "site.example.toml").read_text(encoding="utf-8"))["execution"][
    "data_path"
]


# -- tools -----------------------------------------------------------------------------


def find_tool(env_var: str, name: str, *candidates: Path) -> str:
    """The tool's path, or skip (fail under GREENHOUSE_REQUIRE_DEPLOY_TOOLS=1)."""
    for path in (os.environ.get(env_var), *candidates, shutil.which(name)):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return str(path)
    why = f'{name} not found (set {env_var}, or: eval "$(.ci/deploy-tools.sh)")'
    if REQUIRE_TOOLS:
        pytest.fail(f"{why}; GREENHOUSE_REQUIRE_DEPLOY_TOOLS=1 requires it")
    pytest.skip(why)


# -- the CLI the manifests call ------------------------------------------------------------


def cli_options(command: str) -> set[str]:
    """Every option name of ``greenhouse COMMAND``."""
    from appliance.cli import cli

    group_command = cli.commands[command]
    return {
        name
        for param in group_command.params
        if isinstance(param, click.Option)
        for name in param.opts
    }


def flags(args: list[str]) -> dict[str, str]:
    """``--flag=value`` / ``--flag value`` pairs of an argument list (flags without value: "")."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            found[name] = value
        i += 1
    return found


# -- Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str

    def exec_form(self) -> list[str]:
        """The JSON (exec form) argument, after any ``--option=...`` of HEALTHCHECK."""
        text = self.argument
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        return list(json.loads(text))


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    stages: list[list[Instruction]] = []
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        keyword, _, argument = logical.partition(" ")
        instruction = Instruction(keyword.upper(), argument.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
        logical = ""
    return stages


def find(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in stage if i.keyword == keyword]


# -- compose -----------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    """compose.yaml with its anchors and merge keys resolved (as docker-compose does)."""
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def command_list(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def greenhouse_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if command_list(service)[:1] in (["superlink"], ["supernode"])
    }


def assert_compose_hardening(compose: dict[str, Any]) -> None:
    """The properties every rendering of compose.yaml must keep (raw or docker-compose config)."""
    services = compose["services"]
    roles = [command_list(s)[:1] for s in services.values()]
    assert roles.count(["superlink"]) == 1
    assert roles.count(["supernode"]) >= 2
    assert "postgres" in services
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(t.startswith("/tmp:") for t in service["tmpfs"]), name
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}, name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert "cap_add" not in service and "privileged" not in service, name
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    for name, service in greenhouse_services(compose).items():
        assert service["user"] == f"{UID}:{UID}", name
        assert service["healthcheck"]["test"][1:4] == ["greenhouse", "health", HEALTH], name
        assert flags(command_list(service))["--health-address"] == HEALTH, name
        for port in service.get("ports", []):
            assert "9094" not in str(port), f"{name} publishes its health port"


# -- Kubernetes --------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kubernetes_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml"))
        for doc in load_yaml_documents(path)
    ]


# -- systemd -----------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value given (repeatable keys keep all).

    Like configparser, but keys may repeat (``IPAddressAllow=``, ``SystemCallFilter=``)
    and a line ending in a backslash continues on the next.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        if logical.startswith("[") and logical.endswith("]"):
            current = sections.setdefault(logical[1:-1], {})
        else:
            if current is None:
                raise ValueError(f"{path.name}: {logical!r} outside a section")
            key, eq, value = logical.partition("=")
            if not eq:
                raise ValueError(f"{path.name}: not KEY=VALUE: {logical!r}")
            current.setdefault(key.strip(), []).append(value.strip())
        logical = ""
    return sections
