import textwrap

import pytest

from appliance import ClientApp, ServerApp
from appliance.appconfig import load_app_spec, load_component, merge_run_config, parse_config_pairs
from appliance.errors import AppConfigError


def _write_app(tmp_path, pyproject: str, modules: dict[str, str] | None = None):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    for name, source in (modules or {}).items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return tmp_path


GOOD = """
    [project]
    name = "demo"
    version = "1.2.3"
    [tool.greenhouse.app]
    serverapp = "{mod}:server"
    clientapp = "{mod}:client"
    [tool.greenhouse.app.config]
    rounds = 3
    lr = 0.1
    [tool.greenhouse.app.config.model]
    depth = 2
"""


def test_load_app_spec_flattens_config(tmp_path):
    spec = load_app_spec(_write_app(tmp_path, GOOD.format(mod="m")))
    assert (spec.name, spec.version, spec.serverapp) == ("demo", "1.2.3", "m:server")
    assert spec.config == {"rounds": 3, "lr": 0.1, "model.depth": 2}


@pytest.mark.parametrize(
    ("pyproject", "match"),
    [
        ("[project]\nname='x'\n", "missing the \\[tool.greenhouse.app\\] table"),
        ("[tool.greenhouse.app]\nserverapp='a'\nclientapp='b:c'\n", "must be 'module:attribute'"),
        ("not toml = = =", "cannot read"),
        (
            "[tool.greenhouse.app]\nserverapp='a:b'\nclientapp='b:c'\n[tool.greenhouse.app.config]\nx=[1]\n",
            "'x' has a list value",
        ),
    ],
)
def test_bad_pyproject(tmp_path, pyproject, match):
    with pytest.raises(AppConfigError, match=match):
        load_app_spec(_write_app(tmp_path, pyproject))


def test_missing_directory(tmp_path):
    with pytest.raises(AppConfigError, match=r"no pyproject\.toml"):
        load_app_spec(tmp_path / "nope")


def test_parse_config_pairs_types():
    parsed = parse_config_pairs(["a=1 b=0.5", "c=true", "d=hello", 'e="quoted str"', "f=x=y"])
    assert parsed == {"a": 1, "b": 0.5, "c": True, "d": "hello", "e": "quoted str", "f": "x=y"}
    with pytest.raises(AppConfigError, match="expected key=value"):
        parse_config_pairs(["novalue"])


def test_merge_refuses_unknown_keys():
    assert merge_run_config({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
    with pytest.raises(
        AppConfigError, match=r"unknown run config key\(s\) typo; the app declares: a"
    ):
        merge_run_config({"a": 1}, {"typo": 3})


def test_load_component_checks_type_and_names_missing_modules(tmp_path):
    source = """
        from appliance import ClientApp, ServerApp
        server = ServerApp()
        client = ClientApp()
        not_an_app = 3
    """
    spec = load_app_spec(
        _write_app(tmp_path, GOOD.format(mod="app_mod_ok"), {"app_mod_ok": source})
    )
    assert isinstance(load_component(spec, spec.serverapp, ServerApp), ServerApp)
    assert isinstance(load_component(spec, spec.clientapp, ClientApp), ClientApp)
    with pytest.raises(AppConfigError, match="is a int, expected a ServerApp"):
        load_component(spec, "app_mod_ok:not_an_app", ServerApp)
    with pytest.raises(AppConfigError, match="has no attribute 'missing'"):
        load_component(spec, "app_mod_ok:missing", ServerApp)


def test_load_component_missing_dependency_is_named(tmp_path):
    spec = load_app_spec(
        _write_app(
            tmp_path,
            GOOD.format(mod="app_mod_dep"),
            {"app_mod_dep": "import no_such_dependency_xyz\n"},
        )
    )
    with pytest.raises(AppConfigError, match="no module named 'no_such_dependency_xyz'"):
        load_component(spec, spec.serverapp, ServerApp)
