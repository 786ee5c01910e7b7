"""Container files, checked statically (no container engine runs here): the Dockerfiles' instructions,
the Compose file against the Compose specification's schema, and every path and variable they name."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS_VARS = {f"CODESERVE_{name.upper()}" for name in Settings.model_fields}
# Variables scripts/setup.sh reads (documented in its header), not the server.
SETUP_VARS = set(re.findall(r"CODESERVE_[A-Z_]+", (ROOT / "scripts" / "setup.sh").read_text().split("set -euo")[0]))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM"
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")  # runs as non-root
    health = [args for k, args in steps if k == "HEALTHCHECK"]
    assert health and "/health" in health[0]
    assert ("EXPOSE", "8000") in steps
    assert any(k == "VOLUME" and "/cache" in args for k, args in steps)
    assert [args for k, args in steps if k == "CMD"] == ['["serve"]']
    for kind, args in steps:
        if kind == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        if kind == "ENV":
            for name in re.findall(r"(CODESERVE_[A-Z_]+)=", args):
                assert name in SETTINGS_VARS | SETUP_VARS, f"{dockerfile.name}: {name} is not a setting"


def test_images_use_the_projects_setup() -> None:
    for dockerfile in DOCKERFILES:
        assert any(k == "RUN" and "scripts/setup.sh" in a for k, a in instructions(dockerfile))


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_validates_against_the_compose_spec() -> None:
    schema_path = Path(sys.prefix) / "share" / "codeserve" / "compose_spec.json"
    if not schema_path.exists():
        pytest.skip("Compose schema not installed (scripts/setup.sh --test installs it)")
    # the schema declares draft 2019-09 (with a spelling jsonschema does not recognise by itself)
    jsonschema.Draft201909Validator(json.loads(schema_path.read_text())).validate(_compose())


def test_compose_paths_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_compose_environment_names_settings() -> None:
    compose = _compose()
    env = compose["x-codeserve-env"]
    assert set(env) <= SETTINGS_VARS
    gpu = compose["services"]["codeserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_prometheus_scrapes_the_service_name() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host = target.split(":")[0]
    services = _compose()["services"]
    assert host in services
    assert host in services["codeserve-gpu"]["networks"]["default"]["aliases"]


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/codeserve.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = _compose()["services"]["grafana"]["volumes"]
    assert any(m.endswith(f"{path}/codeserve.json:ro") and m.startswith("./grafana/codeserve.json") for m in mounts)
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
