"""A deliberately small stand-in for ``helm template``, for the charts in deploy/helm.

No helm binary is available to the tests, so the charts keep to a subset this module
renders exactly: ``{{ EXPR }}`` and ``{{ EXPR | quote }}`` where EXPR is ``.Values.a.b``,
``.Release.Name``, ``.Release.Namespace``, ``.Chart.AppVersion`` or ``.`` (inside a
range), and ``range`` / ``if`` / ``end`` on lines of their own. Anything else raises, so a
template that grows past the subset fails the test instead of being compared loosely.

``python tests/deploy/helm_render.py`` rewrites deploy/kubernetes/ from the charts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
_CONTROL = re.compile(r"^\s*{{-?\s*(range|if|end)\b\s*(.*?)\s*-?}}\s*$")


class UnsupportedTemplate(ValueError):
    """The template uses more of Go templates than this renderer knows."""


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str


ROOT = Path(__file__).resolve().parents[2]
#: Chart directory -> (release it is rendered as, plain-manifest directory).
CHARTS = {
    "greenhouse": (Release("greenhouse", "greenhouse"), "superlink"),
    "greenhouse-supernode": (Release("hospital-1", "greenhouse"), "supernode"),
}


def render_chart(chart: Path, release: Release) -> dict[str, str]:
    """Every template of ``chart`` rendered with its default values, by file name."""
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))
    scope = {
        ".Values": values,
        ".Release.Name": release.name,
        ".Release.Namespace": release.namespace,
        ".Chart.AppVersion": meta["appVersion"],
    }
    rendered = {}
    for path in sorted((chart / "templates").glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        rendered[path.name] = "\n".join(_render(lines, scope, None, path.name)) + "\n"
    return rendered


def _lookup(expr: str, scope: dict[str, Any], dot: object) -> object:
    if expr == ".":
        if dot is None:
            raise UnsupportedTemplate("'.' outside a range")
        return dot
    if expr in scope:
        return scope[expr]
    if expr.startswith(".Values."):
        value: Any = scope[".Values"]
        for key in expr.removeprefix(".Values.").split("."):
            if not isinstance(value, dict) or key not in value:
                raise UnsupportedTemplate(f"no value {expr}")
            value = value[key]
        return value
    raise UnsupportedTemplate(f"unsupported expression {expr!r}")


def _text(expr: str, scope: dict[str, Any], dot: object) -> str:
    name, _, pipe = (part.strip() for part in expr.partition("|"))
    value = _lookup(name, scope, dot)
    if pipe == "quote":
        return json.dumps(str(value))
    if pipe:
        raise UnsupportedTemplate(f"unsupported pipeline {expr!r}")
    if isinstance(value, dict | list):
        raise UnsupportedTemplate(f"{name} is not a scalar")
    return "true" if value is True else "false" if value is False else str(value)


def _block_end(lines: list[str], start: int) -> int:
    """Index of the ``end`` closing the block opened at ``start``."""
    depth = 0
    for i in range(start, len(lines)):
        match = _CONTROL.match(lines[i])
        if not match:
            continue
        depth += -1 if match.group(1) == "end" else 1
        if depth == 0:
            return i
    raise UnsupportedTemplate(f"no end for line {start + 1}")


def _render(lines: list[str], scope: dict[str, Any], dot: object, where: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        control = _CONTROL.match(line)
        if control is None:
            out.append(_ACTION.sub(lambda m: _text(m.group(1), scope, dot), line))
            i += 1
            continue
        keyword, argument = control.groups()
        if keyword == "end":
            raise UnsupportedTemplate(f"{where}:{i + 1}: end without a block")
        end = _block_end(lines, i)
        body = lines[i + 1 : end]
        value = _lookup(argument, scope, dot)
        if keyword == "if" and value:
            out += _render(body, scope, dot, where)
        elif keyword == "range":
            if not isinstance(value, list):
                raise UnsupportedTemplate(f"{where}:{i + 1}: range over a non-list")
            for item in value:
                out += _render(body, scope, item, where)
        i = end + 1
    return out


def plain_header(chart: str, template: str, release: Release) -> str:
    return (
        f"# Rendered from deploy/helm/{chart}/templates/{template} with the chart's default\n"
        f"# values (release {release.name}, namespace {release.namespace}). Regenerate with\n"
        "# python tests/deploy/helm_render.py; tests/deploy/test_manifests.py compares them.\n"
    )


def write_plain_manifests() -> None:
    for chart, (release, out) in CHARTS.items():
        target = ROOT / "deploy" / "kubernetes" / out
        target.mkdir(parents=True, exist_ok=True)
        for name, text in render_chart(ROOT / "deploy" / "helm" / chart, release).items():
            (target / name).write_text(plain_header(chart, name, release) + text, encoding="utf-8")


if __name__ == "__main__":
    write_plain_manifests()
