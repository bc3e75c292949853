"""Fast, offline checks of infra/compose.yaml (no Docker): it parses, publishes ports on 127.0.0.1
by default, carries no credential, pins every image through a variable, and matches the services
docs/deployment.md names. The stack itself is proven by `make infra-test` (tests/infra/stack_test.sh)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(os.environ.get("INFRA_COMPOSE_FILE", ROOT / "infra" / "compose.yaml"))  # override: check a variant
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
DOCS = ROOT / "docs" / "deployment.md"

VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN|ACCESS_KEY|API_KEY", re.I)
SECRET_VALUE = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN|API_KEY", re.I)  # the access key is a user name
PRODUCT_IMAGE_VARS = {"PREFCURATE_IMAGE", "PREFCURATE_CUDA_IMAGE"}


def resolve_defaults(text: str) -> str:
    """Interpolate as compose does with an empty environment: ${X:-d} -> d, ${X} and ${X:?e} -> ''."""
    return VAR.sub(lambda m: m.group("arg") if m.group("op") in (":-", "-") else "", text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_compose_parses_as_compose_specification(compose: dict, services: dict) -> None:
    assert "version" not in compose, "the Compose Specification has no top-level version"
    assert set(services) >= {"postgres", "s3", "s3-setup", "prefect-server", "deploy", "worker", "mlflow",
                             "dask-scheduler", "dask-worker-1", "dask-worker-2", "worker-gpu"}
    for name, svc in services.items():
        assert svc.get("image"), f"{name} has no image"
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in ("service_healthy", "service_completed_successfully", "service_started")
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"


def test_every_published_port_binds_loopback_by_default(services: dict) -> None:
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert isinstance(port, str), f"{name}: use the short 'HOST_IP:HOST:CONTAINER' form"
            parts = resolve_defaults(port).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port!r} beyond 127.0.0.1"
            published += 1
    assert published >= 3  # Prefect, MLflow, S3


def test_no_credential_literal_in_compose(services: dict) -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URI with user:password@ in compose.yaml"
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                m = VAR.fullmatch(str(value))
                assert m and m.group("op") in (None, ":?", "?"), (
                    f"{name}.{key} must come from infra/.env as ${{VAR}} or ${{VAR:?msg}}, not {value!r}")
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            if SECRET_VALUE.search(key):
                assert value.rsplit(":", 1)[-1] == "change-me", f".env.example: {key} must be a change-me placeholder"


def test_required_variables_are_in_env_example() -> None:
    required = {m.group("name") for m in VAR.finditer(COMPOSE.read_text()) if m.group("op") in (":?", "?")}
    example = {line.split("=", 1)[0].strip() for line in ENV_EXAMPLE.read_text().splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    assert required and required <= example, f"missing from infra/.env.example: {sorted(required - example)}"


def test_real_env_file_is_ignored_by_git() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert out.returncode == 0, "infra/.env must be ignored by git"


def test_every_image_is_a_variable_with_a_default(services: dict) -> None:
    for name, svc in services.items():
        m = VAR.fullmatch(svc["image"])
        assert m and m.group("op") == ":-" and m.group("arg"), f"{name}: image must be ${{VAR:-default}}"
        if m.group("name") not in PRODUCT_IMAGE_VARS:
            assert "/" not in m.group("arg").split(":")[0] or m.group("arg").startswith("minio/"), m.group("arg")


def test_product_processes_share_one_image_and_thread_setting(services: dict) -> None:
    product = [n for n, s in services.items() if "PREFCURATE_IMAGE" in s["image"]]
    assert set(product) >= {"prefect-server", "deploy", "worker", "mlflow", "dask-scheduler", "dask-worker-1",
                            "dask-worker-2", "s3-setup"}
    for name in ("worker", "dask-worker-1", "dask-worker-2"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "OMP_NUM_THREADS" in env
    for name in ("dask-worker-1", "dask-worker-2"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--nthreads") + 1] == "1", "exact IF needs one thread per Dask worker process"


def test_state_lives_in_named_volumes(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("s3", "/data")):
        sources = {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == mount}
        assert sources and sources <= declared, f"{name} keeps {mount} in a named volume"


def test_gpu_worker_reserves_a_gpu(services: dict) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_every_service_the_docs_name_exists(services: dict) -> None:
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", DOCS.read_text(), flags=re.M)
    assert rows, "docs/deployment.md has a table of the stack's services"
    assert set(rows) == set(services), (
        f"docs name missing services {sorted(set(rows) - set(services))}, leave out {sorted(set(services) - set(rows))}")
