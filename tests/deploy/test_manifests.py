"""deploy/: every manifest parsed and held to its hardening, and to the CLI it calls."""

from __future__ import annotations

import fnmatch
import tomllib
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    DEPLOY,
    HEALTH,
    ROOT,
    SITE_DATA,
    UID,
    assert_compose_hardening,
    cli_options,
    command_list,
    dockerfile_stages,
    find,
    flags,
    greenhouse_services,
    kubernetes_objects,
    load_compose,
    load_yaml_documents,
    parse_unit,
)
from helm_render import CHARTS, render_chart

# -- Dockerfile --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages():
    return dockerfile_stages(DEPLOY / "Dockerfile")


def test_dockerfile_builds_in_one_stage_and_ships_another(stages):
    assert len(stages) == 2
    builder, final = stages
    assert builder[0].argument == "python:3.11-slim AS builder"
    assert final[0].argument == "python:3.11-slim"
    assert any("build-essential" in i.argument for i in find(builder, "RUN"))


def test_final_stage_has_no_compilers_and_no_package_installs(stages):
    final = stages[-1]
    for run in find(final, "RUN"):
        for banned in ("apt-get install", "build-essential", "gcc", "pip install"):
            assert banned not in run.argument, run.argument
    (copy,) = find(final, "COPY")
    assert copy.argument == "--from=builder /opt/greenhouse /opt/greenhouse"


def test_final_stage_runs_as_a_fixed_non_root_user(stages):
    final = stages[-1]
    (user,) = find(final, "USER")
    assert user.argument == f"{UID}:{UID}"
    (run,) = [r for r in find(final, "RUN") if "useradd" in r.argument]
    assert f"--uid {UID}" in run.argument
    assert f"--gid {UID}" in run.argument


def test_final_stage_suits_a_read_only_root(stages):
    final = stages[-1]
    (volume,) = find(final, "VOLUME")
    assert volume.exec_form() == ["/var/lib/greenhouse"]
    env = " ".join(i.argument for i in find(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/var/lib/greenhouse" in env  # HOME is inside the volume
    assert "TMPDIR=/tmp" in env


def test_one_image_for_every_role_with_a_health_check(stages):
    final = stages[-1]
    (entrypoint,) = find(final, "ENTRYPOINT")
    assert entrypoint.exec_form() == ["greenhouse"]
    (healthcheck,) = find(final, "HEALTHCHECK")
    assert healthcheck.exec_form()[:3] == ["greenhouse", "health", HEALTH]
    env = " ".join(i.argument for i in find(final, "ENV"))
    assert f"GREENHOUSE_HEALTH_ADDRESS={HEALTH}" in env  # what the HEALTHCHECK probes
    assert "9094" not in " ".join(i.argument for i in find(final, "EXPOSE"))


def test_the_builder_copies_every_package_the_wheel_needs(stages):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {i.argument.split()[0].rstrip("/") for i in find(stages[0], "COPY")}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= {
        name for i in find(stages[0], "COPY") for name in i.argument.split()[:-1]
    }
    # ... and the build context filter lets each of them through.
    rules = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        included = False
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.removeprefix("!").rstrip("/")
            if pattern == "**" or fnmatch.fnmatch(source, pattern):
                included = negated
        assert included, f"{source} is excluded by Dockerfile.dockerignore"


# -- compose -----------------------------------------------------------------------------


def _bind_mounts(service: dict[str, Any]) -> list[str]:
    return [v for v in service.get("volumes", []) if str(v).startswith(("./", "/"))]


def test_compose_hardening():
    assert_compose_hardening(load_compose())


def test_compose_mounts_certificates_policies_and_data_read_only():
    for name, service in load_compose()["services"].items():
        for mount in _bind_mounts(service):
            assert mount.endswith(":ro"), f"{name}: {mount} is writable"
    for name, service in greenhouse_services(load_compose()).items():
        targets = [m.split(":")[1] for m in _bind_mounts(service)]
        if command_list(service)[0] == "supernode":
            assert SITE_DATA in targets, name
            policy = flags(command_list(service))["--policy"]
            assert any(policy.startswith(t + "/") for t in targets), name


def test_compose_networks_confine_the_nodes_and_the_database():
    compose = load_compose()
    networks = compose["networks"]
    services = compose["services"]
    assert services["postgres"]["networks"] == ["db"]
    assert networks["db"]["internal"] is True
    for name, service in greenhouse_services(compose).items():
        if command_list(service)[0] == "supernode":
            assert service["networks"] == ["fleet"], name
    assert networks["fleet"]["internal"] is True


def test_compose_keeps_the_database_password_out_of_the_file():
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert "${GREENHOUSE_DB_PASSWORD:?" in text
    superlink = load_compose()["services"]["superlink"]
    assert "--database" not in flags(command_list(superlink))  # from the environment
    assert "GREENHOUSE_DATABASE_URL" in superlink["environment"]


# -- Kubernetes: chart and plain manifests -----------------------------------------------


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_plain_manifests_are_the_chart_rendered_with_its_defaults(chart):
    release, plain_dir = CHARTS[chart]
    rendered = render_chart(DEPLOY / "helm" / chart, release)
    plain = DEPLOY / "kubernetes" / plain_dir
    assert sorted(rendered) == sorted(p.name for p in plain.glob("*.yaml"))
    for name, text in rendered.items():
        assert [d for d in yaml.safe_load_all(text) if d] == load_yaml_documents(plain / name), (
            f"deploy/kubernetes/{plain_dir}/{name} differs from the chart's {name}: "
            "run python tests/deploy/helm_render.py"
        )


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_chart_metadata(chart):
    meta = yaml.safe_load((DEPLOY / "helm" / chart / "Chart.yaml").read_text(encoding="utf-8"))
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == chart
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["appVersion"] == pyproject["project"]["version"]


def _deployments() -> list[dict[str, Any]]:
    deployments = [o for o in kubernetes_objects() if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    return deployments


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_object_names_its_namespace():
    for obj in kubernetes_objects():
        assert obj["metadata"]["namespace"] == "greenhouse", obj["metadata"]["name"]


def test_pods_run_non_root_with_the_runtime_seccomp_profile_and_no_api_token():
    for deployment in _deployments():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == int(UID)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)


def test_every_container_is_locked_down_and_bounded():
    for deployment in _deployments():
        for container in _containers(deployment):
            context = container["securityContext"]
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), where


def test_probes_use_greenhouse_health_on_the_address_the_process_serves():
    for deployment in _deployments():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        address = flags(container["args"])["--health-address"]
        assert address.startswith("127.0.0.1:")  # pod-local
        for probe in ("livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:3] == ["greenhouse", "health", address], probe
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert int(address.rsplit(":", 1)[1]) not in ports


def test_supernode_liveness_survives_a_missing_superlink_but_readiness_does_not():
    (node,) = [d for d in _deployments() if d["metadata"]["name"].endswith("-supernode")]
    container = node["spec"]["template"]["spec"]["containers"][0]
    assert "--live" in container["livenessProbe"]["exec"]["command"]
    assert "--live" not in container["readinessProbe"]["exec"]["command"]


def test_secrets_and_site_data_are_mounted_read_only_and_keys_copied_0600():
    for deployment in _deployments():
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        main = spec["containers"][0]
        for mount in main["volumeMounts"]:
            source = volumes[mount["name"]]
            if "secret" in source or "configMap" in source or mount["mountPath"] == SITE_DATA:
                assert mount.get("readOnly") is True, mount
        (init,) = spec["initContainers"]
        assert "install -m 0600" in init["command"][-1]
        args = flags(main["args"])
        for option in ("--key", "--signing-key"):
            if option in args:  # the copies, never the group-readable Secret files
                assert args[option].startswith("/run/greenhouse/keys/"), option


def test_superlink_reads_its_database_url_from_a_secret():
    (link,) = [d for d in _deployments() if d["metadata"]["name"].endswith("-superlink")]
    container = link["spec"]["template"]["spec"]["containers"][0]
    (env,) = [e for e in container["env"] if e["name"] == "GREENHOUSE_DATABASE_URL"]
    assert "secretKeyRef" in env["valueFrom"]
    assert "--database" not in flags(container["args"])


def test_network_policies_and_services_never_expose_health():
    objects = kubernetes_objects()
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert len(policies) == 2
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        ingress_ports = {
            port["port"] for rule in policy["spec"].get("ingress", []) for port in rule["ports"]
        }
        assert 9094 not in ingress_ports
    for service in (o for o in objects if o["kind"] == "Service"):
        assert 9094 not in {p["port"] for p in service["spec"]["ports"]}


def test_every_checkov_exception_carries_a_reason():
    for deployment in _deployments():
        annotations = deployment["metadata"].get("annotations", {})
        for key, value in annotations.items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check.startswith("CKV"), value
                assert len(reason.split()) >= 5, f"{key}: give a real reason"
                assert "=" not in reason  # checkov splits the annotation on '='


# -- systemd -----------------------------------------------------------------------------

UNITS = {
    "greenhouse-superlink.service": "superlink",
    "greenhouse-supernode.service": "supernode",
}


def _service(unit: str) -> dict[str, list[str]]:
    return parse_unit(DEPLOY / "systemd" / unit)["Service"]


def _one(service: dict[str, list[str]], key: str) -> str:
    (value,) = service[key]
    return value


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_are_hardened(unit):
    service = _service(unit)
    expected = {
        "DynamicUser": "no",
        "User": "greenhouse",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert _one(service, key) == value, key


@pytest.mark.parametrize(("unit", "role"), sorted(UNITS.items()))
def test_units_write_only_their_state_dir_and_read_only_the_config(unit, role):
    service = _service(unit)
    args = _one(service, "ExecStart").split()
    assert args[1] == role
    data_dir = flags(args[2:])["--data-dir"]
    assert _one(service, "ReadWritePaths") == data_dir
    assert data_dir == "/var/lib/" + _one(service, "StateDirectory")
    read_only = _one(service, "ReadOnlyPaths").split()
    assert "/etc/greenhouse" in read_only
    if role == "supernode":
        assert SITE_DATA in read_only
    assert flags(args[2:])["--health-address"] == HEALTH


def test_supernode_may_reach_only_its_superlink():
    service = _service("greenhouse-supernode.service")
    assert service["IPAddressDeny"] == ["any"]
    superlink = flags(_one(service, "ExecStart").split()[2:])["--superlink"]
    host = superlink.rsplit(":", 1)[0]
    assert sorted(service["IPAddressAllow"]) == sorted(["localhost", host])


# -- the CLI every manifest calls --------------------------------------------------------


def _invocations() -> list[tuple[str, str, list[str]]]:
    """(where, command, arguments) of every greenhouse command line in deploy/."""
    found = []
    for name, service in load_compose()["services"].items():
        args = command_list(service)
        if args[:1] in (["superlink"], ["supernode"]):
            found.append((f"compose {name}", args[0], args[1:]))
    for deployment in _deployments():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container["args"]
            found.append((f"kubernetes {container['name']}", args[0], args[1:]))
            for probe in ("livenessProbe", "readinessProbe"):
                command = container[probe]["exec"]["command"]
                found.append((f"kubernetes {probe}", command[1], command[2:]))
    for unit in UNITS:
        args = _one(_service(unit), "ExecStart").split()
        found.append((f"systemd {unit}", args[1], args[2:]))
    return found


def test_manifests_use_only_options_the_cli_has():
    invocations = _invocations()
    assert len(invocations) >= 9
    for where, command, args in invocations:
        unknown = set(flags(args)) - cli_options(command)
        assert not unknown, f"{where}: greenhouse {command} has no {sorted(unknown)}"


def test_a_missing_tool_skips_or_fails_as_ci_asks(monkeypatch):
    import deploy_manifests

    monkeypatch.setenv("GREENHOUSE_NO_SUCH_TOOL", "/nonexistent/tool")
    monkeypatch.setattr(deploy_manifests, "REQUIRE_TOOLS", False)
    with pytest.raises(pytest.skip.Exception, match="greenhouse-no-such-tool not found"):
        deploy_manifests.find_tool("GREENHOUSE_NO_SUCH_TOOL", "greenhouse-no-such-tool")
    monkeypatch.setattr(deploy_manifests, "REQUIRE_TOOLS", True)
    with pytest.raises(pytest.fail.Exception, match="GREENHOUSE_REQUIRE_DEPLOY_TOOLS=1"):
        deploy_manifests.find_tool("GREENHOUSE_NO_SUCH_TOOL", "greenhouse-no-such-tool")


def test_the_flag_reader_sees_both_spellings():
    assert flags(["--a=1", "--b", "2", "--c", "--d=x=y"]) == {
        "--a": "1",
        "--b": "2",
        "--c": "",
        "--d": "x=y",
    }


def test_readme_documents_every_deploy_file():
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            relative = path.relative_to(DEPLOY)
            top = relative.parts[0]
            assert str(relative) in readme or f"{top}/" in readme, f"deploy/{relative}"


def test_no_manifest_names_a_path_of_a_developer_machine():
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for marker in ("/home/", "/root/", "/work/", "/Users/"):
                assert marker not in text, f"deploy/{path.relative_to(DEPLOY)}: {marker}"


def test_plain_manifest_directories_hold_only_yaml():
    paths = list((DEPLOY / "kubernetes").rglob("*"))
    assert paths
    for path in paths:
        assert path.is_dir() or path.suffix == ".yaml", path
