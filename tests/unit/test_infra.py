"""The deployment in infra/: a compose file Docker Compose accepts, one image for the four docproc
processes, no default credentials, and a consumer timeout longer than the task time limit."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import PurePosixPath
from typing import Any

import pytest

from service.errors import ConfigError
from service.settings import Settings
from tests.support import ROOT, missing

INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
CHECK_COMPOSE = INFRA / "check-compose.sh"
RABBITMQ_CONF = INFRA / "rabbitmq" / "rabbitmq.conf"
DOCPROC_SERVICES = ("api", "worker", "beat", "dlq")


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def rabbitmq_setting(key: str) -> str:
    found = re.search(rf"^{re.escape(key)}\s*=\s*(\S+)\s*$", RABBITMQ_CONF.read_text(), re.M)
    assert found is not None, f"{key} is not set in {RABBITMQ_CONF}"
    return found.group(1)


def test_docker_compose_accepts_the_compose_file() -> None:
    found = subprocess.run(
        [str(CHECK_COMPOSE), "--find"], capture_output=True, text=True, timeout=60, check=False
    )
    if found.returncode != 0:
        missing(
            "no Docker Compose v2 to validate infra/docker-compose.yml: run "
            "infra/check-compose.sh, which installs one"
        )
    checked = subprocess.run(
        [str(CHECK_COMPOSE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_four_docproc_services_run_one_image_built_from_this_repository() -> None:
    services = compose()["services"]
    builds = {json.dumps(services[name]["build"], sort_keys=True) for name in DOCPROC_SERVICES}
    images = {services[name]["image"] for name in DOCPROC_SERVICES}

    assert len(builds) == 1, builds
    assert len(images) == 1, images
    assert json.loads(builds.pop()) == {"context": "..", "dockerfile": "infra/Dockerfile"}
    assert {name: services[name]["command"] for name in DOCPROC_SERVICES} == {
        name: ["serve", name] for name in DOCPROC_SERVICES
    }
    # Flower (profile `observe`) runs the same image, with Celery's command line.
    assert services["flower"]["image"] in images
    others = set(services) - set(DOCPROC_SERVICES) - {"flower"}
    assert others == {"rabbitmq", "postgres", "prometheus", "grafana"}
    assert all("build" not in services[name] for name in others)


def test_the_docproc_services_reach_the_compose_broker_and_database() -> None:
    services = compose()["services"]
    for name in DOCPROC_SERVICES:
        environment = services[name]["environment"]
        assert "@rabbitmq:5672/" in environment["DOCPROC_BROKER_URL"], name
        assert environment["DOCPROC_MANAGEMENT_URL"] == "http://rabbitmq:15672", name
        assert "@postgres:5432/" in environment["DOCPROC_DATABASE_URL"], name


def test_no_default_credentials_and_every_secret_from_the_env_file() -> None:
    for path in (COMPOSE_FILE, INFRA / ".env.example", INFRA / "Dockerfile"):
        assert not re.search(r"\bguest\b", path.read_text(), re.I), f"guest in {path}"
    environment = compose()["services"]["api"]["environment"]
    assert environment["DOCPROC_BROKER_URL"].startswith(
        "amqp://${RABBITMQ_USER:?set it in infra/.env}:${RABBITMQ_PASSWORD:?"
    )
    example = (INFRA / ".env.example").read_text()
    for variable in ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert re.search(rf"^{variable}=\S+$", example, re.M), f"{variable} in .env.example"


def test_rabbitmq_loads_the_definitions_compose_mounts() -> None:
    rabbitmq = compose()["services"]["rabbitmq"]
    definitions_dir = PurePosixPath(rabbitmq_setting("load_definitions"))
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in rabbitmq["volumes"]}
    user_file = PurePosixPath(rabbitmq["configs"][0]["target"])
    topology_file = PurePosixPath(mounts["./rabbitmq/definitions.json"])

    assert topology_file.parent == definitions_dir
    assert user_file.parent == definitions_dir
    assert user_file.name < topology_file.name, "the user is imported before the topology"
    assert PurePosixPath(mounts["./rabbitmq/rabbitmq.conf"]).parent.name == "conf.d"
    plugins = (INFRA / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins
    assert "rabbitmq_prometheus" in plugins


def test_the_consumer_timeout_outlasts_the_default_task_time_limit() -> None:
    consumer_timeout_ms = int(rabbitmq_setting("consumer_timeout"))

    assert Settings().time_limit == 2400
    assert consumer_timeout_ms > Settings().time_limit * 1000


def test_the_api_is_published_on_loopback_and_docproc_is_no_broker_administrator() -> None:
    services = compose()
    [api_port] = services["services"]["api"]["ports"]
    assert api_port.startswith("${DOCPROC_API_BIND:-127.0.0.1}:")
    users = re.findall(r'"tags": "(\w+)"', services["configs"]["rabbitmq-user"]["content"])
    assert users == ["management", "administrator"], "docproc's user is not the administrator"
    example = (INFRA / ".env.example").read_text()
    assert re.search(r"^DOCPROC_API_BIND=127\.0\.0\.1$", example, re.M)


def test_the_example_passwords_are_refused_at_start() -> None:
    example = dict(
        line.split("=", 1)
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    url = f"amqp://{example['RABBITMQ_USER']}:{example['RABBITMQ_PASSWORD']}@rabbitmq:5672//"

    with pytest.raises(ConfigError, match=r"placeholder of infra/\.env\.example"):
        Settings.from_env({"DOCPROC_BROKER_URL": url})
