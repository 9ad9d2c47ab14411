"""App directories: ``[tool.greenhouse.app]`` in ``pyproject.toml`` and run-config overrides.

An app directory holds a ``pyproject.toml`` naming its components and the default
run config::

    [tool.greenhouse.app]
    serverapp = "hospital.server_app:app"
    clientapp = "hospital.client_app:app"

    [tool.greenhouse.app.config]
    num-server-rounds = 5
    learning-rate = 0.1

Nested config tables are flattened with dots (``[…config.model] depth = 2`` becomes
``model.depth``). Overrides (``--run-config k=v``) may only set keys the app
declares, and values are parsed as TOML (``5`` is an int, ``true`` a bool, anything
that is not valid TOML a string).
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.context import UserConfig, UserConfigValue
from appliance.errors import AppConfigError

__all__ = [
    "AppSpec",
    "load_app_spec",
    "load_component",
    "merge_run_config",
    "parse_config_pairs",
]

_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class AppSpec:
    """An app directory's declared components and default run config."""

    directory: Path
    serverapp: str
    clientapp: str
    name: str
    version: str
    config: UserConfig = field(default_factory=dict)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> UserConfig:
    flat: UserConfig = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            raise AppConfigError(
                f"run config key {name!r} has a {type(value).__name__} value; "
                "use a bool, int, float or string"
            )
    return flat


def _reference(table: Mapping[str, Any], key: str, pyproject: Path) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not _REFERENCE.match(value):
        raise AppConfigError(
            f"{pyproject}: [tool.greenhouse.app] {key} must be 'module:attribute', got {value!r}"
        )
    return value


def load_app_spec(app_dir: str | Path) -> AppSpec:
    """Read ``APP_DIR/pyproject.toml``.

    Raises:
        AppConfigError: the directory, file or ``[tool.greenhouse.app]`` table is invalid.
    """
    directory = Path(app_dir).resolve()
    pyproject = directory / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppConfigError(f"{app_dir}: no pyproject.toml (is this an app directory?)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppConfigError(f"{pyproject}: cannot read: {exc}") from None
    app = data.get("tool", {}).get("greenhouse", {}).get("app")
    if not isinstance(app, dict):
        raise AppConfigError(f"{pyproject}: missing the [tool.greenhouse.app] table")
    project = data.get("project", {})
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise AppConfigError(f"{pyproject}: [tool.greenhouse.app] config must be a table")
    return AppSpec(
        directory=directory,
        serverapp=_reference(app, "serverapp", pyproject),
        clientapp=_reference(app, "clientapp", pyproject),
        name=str(project.get("name", directory.name)),
        version=str(project.get("version", "0.0.0")),
        config=_flatten(config),
    )


def _parse_value(text: str) -> UserConfigValue:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, bool | int | float | str):
        return value
    return text


def parse_config_pairs(items: Iterable[str]) -> UserConfig:
    """Parse ``k=v`` items (each may hold several space-separated pairs).

    Raises:
        AppConfigError: an item is not ``key=value``.
    """
    config: UserConfig = {}
    for item in items:
        try:
            pairs = shlex.split(item)
        except ValueError as exc:
            raise AppConfigError(f"cannot parse {item!r}: {exc}") from None
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise AppConfigError(f"expected key=value, got {pair!r}")
            config[key] = _parse_value(value)
    return config


def merge_run_config(defaults: Mapping[str, UserConfigValue], overrides: UserConfig) -> UserConfig:
    """The app's defaults with ``overrides`` applied.

    Raises:
        AppConfigError: an override names a key the app does not declare.
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise AppConfigError(
            f"unknown run config key(s) {', '.join(unknown)}; the app declares: {known}"
        )
    return {**defaults, **overrides}


def load_component(spec: AppSpec, reference: str, expected: type) -> Any:
    """Import ``module:attribute`` from the app directory and check its type.

    Raises:
        AppConfigError: the module cannot be imported (e.g. a missing dependency,
            named), the attribute is missing, or it is not an ``expected``.
    """
    module_name, _, attribute = reference.partition(":")
    directory = str(spec.directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AppConfigError(
            f"cannot import {module_name!r}: no module named {exc.name!r}"
        ) from exc
    except Exception as exc:
        raise AppConfigError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        component = getattr(module, attribute)
    except AttributeError:
        raise AppConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(component, expected):
        raise AppConfigError(
            f"{reference} is a {type(component).__name__}, expected a {expected.__name__}"
        )
    return component
