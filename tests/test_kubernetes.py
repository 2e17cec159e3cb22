"""deploy/kubernetes/: valid for Kubernetes, and consistent with meetbot and compose.yaml.

No cluster here, so what can be checked without one is checked strictly:

* every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate's
  strict mode: an unknown or misspelt field fails), offline, for the oldest
  and the newest Kubernetes the package knows;
* every variable the manifests set is one ``meetbot`` reads
  (``bot.config.variable_names``), and with the placeholders filled in the
  settings load, in HTTP mode, on PostgreSQL (replicas share it);
* the objects point at each other (selectors, named ports, ConfigMap and
  Secret names), the probes and the grace period are compose's, and the
  commands are real ``meetbot`` commands.
"""

from __future__ import annotations

import socket
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_validate.utils import all_versions

from bot.config import load_settings, variable_names
from bot.durations import parse_duration
from bot.ops.cli import main

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
VERSIONS = sorted(
    {v.rsplit(".", 1)[0] for v in all_versions()}, key=lambda v: tuple(map(int, v.split(".")))
)
PLACEHOLDER = "replace-me"


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests()}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: validation must be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use during validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_the_expected_objects_are_there():
    kinds = sorted(kind for kind, _ in objects())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_every_manifest_validates_offline(no_network, version):
    found = manifests()
    assert len(found) >= 6
    for name, doc in found:
        # Strict: additional properties are errors. A missing schema raises, never skips.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_mistakes(no_network):
    deployment = objects()[("Deployment", "meetbot")]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


# -- the settings ------------------------------------------------------------------


def pod_specs() -> list[dict]:
    o = objects()
    return [
        o[("Deployment", "meetbot")]["spec"]["template"]["spec"],
        o[("Job", "meetbot-migrate")]["spec"]["template"]["spec"],
    ]


def settings_env() -> dict[str, str]:
    """What a meetbot container sees: the ConfigMap's data and the Secret's values."""
    o = objects()
    config = o[("ConfigMap", "meetbot-config")]["data"]
    secret = o[("Secret", "meetbot-secrets")]
    assert "data" not in secret, "use stringData: the values are placeholders to replace"
    return {**config, **secret["stringData"]}


def test_every_variable_set_is_one_meetbot_reads():
    read = variable_names()
    set_here = set(settings_env())
    for spec in pod_specs():
        for container in spec["containers"]:
            set_here |= {e["name"] for e in container.get("env", [])}
    assert set_here, "no settings found"
    assert set_here <= read, f"meetbot does not read {sorted(set_here - read)}"


def test_every_pod_takes_its_settings_from_the_configmap_and_the_secret():
    for spec in pod_specs():
        (container,) = spec["containers"]
        sources = container["envFrom"]
        assert {"configMapRef": {"name": "meetbot-config"}} in sources
        assert {"secretRef": {"name": "meetbot-secrets"}} in sources


def test_secrets_are_in_the_secret_only_and_are_placeholders():
    o = objects()
    config = o[("ConfigMap", "meetbot-config")]["data"]

    def is_secret(name: str) -> bool:
        # DATABASE_URL carries the PostgreSQL password.
        return name.endswith(("_TOKEN", "_SECRET", "_PASSWORD", "_KEY")) or name == "DATABASE_URL"

    assert [name for name in config if is_secret(name)] == [], "a secret in the ConfigMap"
    stored = o[("Secret", "meetbot-secrets")]["stringData"]
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "DATABASE_URL"} <= set(stored)
    for name, val in stored.items():
        if is_secret(name):
            assert PLACEHOLDER in val, f"{name} holds a value that is not a placeholder"


def filled(env: dict[str, str]) -> dict[str, str]:
    """The templates with each placeholder replaced, as an operator would."""
    from cryptography.fernet import Fernet

    real = {
        "MEETBOT_SECRET_KEY": Fernet.generate_key().decode(),
        "MEETBOT_WEBHOOK_SECRET": "w" * 24,
        "AMS_JWT_SECRET": "s" * 40,
    }
    return {
        k: real.get(k, v.replace(PLACEHOLDER, "x1y2z3")) if PLACEHOLDER in v else v
        for k, v in env.items()
    }


def test_filled_in_settings_load_for_replicas():
    settings = load_settings(filled(settings_env()))
    assert settings.http_mode, "replicas behind a Service need HTTP mode, not Socket Mode"
    assert settings.database_url.startswith("postgresql"), "replicas share PostgreSQL"
    assert settings.public_url and settings.log_format == "json"


def test_unfilled_secret_key_stops_the_bot():
    """Applied as shipped, the bot refuses to start rather than run on a published key."""
    from bot.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_settings(settings_env())
    assert any("MEETBOT_SECRET_KEY" in p for p in e.value.problems)


# -- the objects fit together, and fit meetbot and compose.yaml ---------------------


def test_deployment_probes_grace_and_replicas():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    deployment = objects()[("Deployment", "meetbot")]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == compose["services"]["bot"]["command"] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    grace = parse_duration(compose["services"]["bot"]["stop_grace_period"])
    assert pod["terminationGracePeriodSeconds"] == grace
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) < grace
    # The probes' named port is the one meetbot listens on (PORT in the ConfigMap).
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert ports["http"] == int(settings_env()["PORT"])
    # The image's user (Dockerfile: useradd --uid 10001), never root.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "--uid 10001" in (REPO / "Dockerfile").read_text()


def test_service_and_budget_select_the_bot_pods():
    o = objects()
    labels = o[("Deployment", "meetbot")]["spec"]["template"]["metadata"]["labels"]
    deployment_selector = o[("Deployment", "meetbot")]["spec"]["selector"]["matchLabels"]
    job_labels = o[("Job", "meetbot-migrate")]["spec"]["template"]["metadata"]["labels"]
    service = o[("Service", "meetbot")]["spec"]
    budget = o[("PodDisruptionBudget", "meetbot")]["spec"]
    for selector in (deployment_selector, service["selector"], budget["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
        assert not selector.items() <= job_labels.items(), "the migration pod is not a bot"
    (port,) = service["ports"]
    container = o[("Deployment", "meetbot")]["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    # One replica may go at a time, and one always stays.
    assert budget["minAvailable"] >= 1
    assert budget["minAvailable"] < o[("Deployment", "meetbot")]["spec"]["replicas"]


def test_migration_job_runs_once_with_the_bots_image():
    o = objects()
    job = o[("Job", "meetbot-migrate")]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert container["args"] == compose["services"]["migrate"]["command"] == ["db", "upgrade"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    bot = o[("Deployment", "meetbot")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == bot["image"]
    for argv in (container["args"], bot["args"]):
        result = CliRunner().invoke(main, [*argv, "--help"])
        assert result.exit_code == 0, (argv, result.output)


def test_deploy_doc_shows_the_kubernetes_files():
    text = (REPO / "docs" / "deploy.md").read_text()
    assert "Kubernetes" in text
    for path in sorted(K8S.glob("*.yaml")):
        assert f"deploy/kubernetes/{path.name}" in text, path.name
