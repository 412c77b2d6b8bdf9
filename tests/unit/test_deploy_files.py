"""The deployment files stay true to the code: Dockerfile, compose.yaml, Prometheus config,
alert rules and the Grafana dashboard name only ports, settings, files and metrics that
exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from billing_worker.adapters.observability.http import HealthServer, Readiness, health_app
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.config import ENV_PREFIX, Settings
from billing_worker.entrypoints.cli import build_parser
from billing_worker.entrypoints.stripe_relay import StripeRelay

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "billing_worker" / "deploy"
DEFAULTS = Settings()

# Prometheus's own series that rules may use besides the exported ones.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    """A YAML file as plain data."""
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def exported_series() -> set[str]:
    """Every series name the worker and the Stripe relay can expose, as PromQL spells it."""
    names: set[str] = set()
    for registry in (Metrics().registry, StripeRelay(DEFAULTS).registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def exported_metrics() -> set[str]:
    """Every metric as the README names it (counters with ``_total``, histograms bare)."""
    names: set[str] = set()
    for registry in (Metrics().registry, StripeRelay(DEFAULTS).registry):
        for family in registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (crudely, but enough for our files)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)  # offsets (durations)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def covered(series: set[str], metric: str) -> bool:
    """Whether ``series`` (names used in expressions) show ``metric`` (a README name)."""
    return metric in series or any(f"{metric}{s}" in series for s in ("_bucket", "_sum", "_count"))


class TestPromqlNames:
    """The crude PromQL reader the other tests rely on."""

    def test_finds_metrics_and_skips_functions_labels_and_numbers(self) -> None:
        """Functions, grouping labels, matchers, ranges and numbers are not metric names."""
        expr = (
            'histogram_quantile(0.99, sum by (le) (rate(billing_batch_size_bucket{queue=~"$q"}'
            "[$__rate_interval]))) / on (queue) group_left sum(up) > 1e3 and absent(billing_ready)"
            " - billing_outbox_pending offset 15m"
        )
        assert metric_names(expr) == {
            "billing_batch_size_bucket",
            "up",
            "billing_ready",
            "billing_outbox_pending",
        }

    def test_an_unknown_name_is_reported(self) -> None:
        """A misspelt metric comes out as itself, so the checks below catch it."""
        assert metric_names("rate(billing_events_recieved_total[5m]) > 0") == {
            "billing_events_recieved_total"
        }


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments), one list per stage."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of ``stage``."""
    return [arguments for k, arguments in stage if k == keyword]


class TestDockerfile:
    """The image: wheel built in one stage, installed in a slim, unprivileged runtime."""

    def test_builds_the_wheel_in_one_stage_and_installs_it_in_a_slim_one(self) -> None:
        """A named build stage makes the wheel; the slim runtime copies and installs only it."""
        stages = dockerfile_stages()
        assert len(stages) >= 2
        build_from = instructions(stages[0], "FROM")[0]
        build_name = re.search(r"\bAS\s+(\S+)", build_from, re.IGNORECASE)
        assert build_name, build_from
        assert any("build --wheel" in run for run in instructions(stages[0], "RUN"))
        runtime = stages[-1]
        assert "-slim" in instructions(runtime, "FROM")[0]
        copies = instructions(runtime, "COPY")
        assert any(c.startswith(f"--from={build_name.group(1)} ") and ".whl" in c for c in copies)
        assert all("--from=" in c for c in copies), "the runtime takes nothing but the wheel"
        assert any("pip install" in r and ".whl" in r for r in instructions(runtime, "RUN"))

    def test_build_stage_copies_what_the_wheel_is_made_of(self) -> None:
        """Every package, force-included tree and the readme pyproject.toml names is copied."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
        needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"]}
        needed.update(wheel.get("force-include", {}))
        copied = {
            source
            for copy in instructions(dockerfile_stages()[0], "COPY")
            if not copy.startswith("--")
            for source in shlex.split(copy)[:-1]
        }
        assert needed <= copied, needed - copied

    def test_runs_as_an_unprivileged_user(self) -> None:
        """The runtime stage switches to a created, non-root user before its entry point."""
        runtime = dockerfile_stages()[-1]
        users = instructions(runtime, "USER")
        assert users, "no USER in the runtime stage"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0")
        assert any(
            "useradd" in r and re.search(rf"\b{user}\b", r) for r in instructions(runtime, "RUN")
        )
        keywords = [k for k, _ in runtime]
        assert keywords.index("USER") < keywords.index("ENTRYPOINT")

    def test_entry_point_is_the_command_and_runs_the_worker_by_default(self) -> None:
        """ENTRYPOINT is the console script pyproject.toml installs; CMD is its `run`."""
        runtime = dockerfile_stages()[-1]
        entrypoint = json.loads(instructions(runtime, "ENTRYPOINT")[-1])
        command = json.loads(instructions(runtime, "CMD")[-1])
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert entrypoint == ["billing-worker"]
        assert "billing-worker" in project["project"]["scripts"]
        assert command == ["run"]
        assert build_parser().parse_args(command).command == "run"

    def test_exposes_the_default_ports(self) -> None:
        """EXPOSE names the default metrics/health port and the Stripe relay's port."""
        exposed = {p for e in instructions(dockerfile_stages()[-1], "EXPOSE") for p in e.split()}
        assert {str(DEFAULTS.http_port), str(DEFAULTS.stripe_relay_port)} <= exposed


def healthcheck_argv() -> list[str]:
    """The HEALTHCHECK's command, in exec form."""
    (check,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    _, _, command = check.partition("CMD ")
    argv: list[str] = json.loads(command)
    return argv


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    """The worker's own /healthz, on a free port."""
    server = HealthServer("127.0.0.1", 0, health_app(Metrics().registry, Readiness()))
    server.start()
    yield server
    server.stop()


class TestHealthcheck:
    """The image's HEALTHCHECK probes /healthz on BILLING_HTTP_PORT with the stdlib only."""

    def test_uses_python_not_curl_and_defaults_to_the_settings_port(self) -> None:
        """The slim image has no curl: the check is python, defaulting to the default port."""
        argv = healthcheck_argv()
        assert argv[0] == "python"
        assert "/healthz" in argv[-1]
        assert f"'BILLING_HTTP_PORT', '{DEFAULTS.http_port}'" in argv[-1]

    def test_passes_when_healthz_answers(self, health_server: HealthServer) -> None:
        """Run against a live /healthz on BILLING_HTTP_PORT, the check exits 0."""
        env = {**os.environ, "BILLING_HTTP_PORT": str(health_server.port)}
        argv = [sys.executable, *healthcheck_argv()[1:]]
        assert subprocess.run(argv, env=env, check=False, timeout=10).returncode == 0

    def test_fails_when_nothing_answers(self) -> None:
        """With nothing listening on BILLING_HTTP_PORT, the check exits non-zero."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "BILLING_HTTP_PORT": str(port)}
        argv = [sys.executable, *healthcheck_argv()[1:]]
        result = subprocess.run(argv, env=env, check=False, timeout=10, capture_output=True)
        assert result.returncode != 0


# --- compose.yaml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as data."""
    data: dict[str, Any] = load_yaml(ROOT / "compose.yaml")
    return data


class TestCompose:
    """`docker compose up` from a clean clone gives a working, scalable stack."""

    def test_is_valid(self) -> None:
        """compose.yaml validates against the Compose specification (offline, built-in schema)."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
                "compose.yaml",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_has_the_whole_stack(self, compose: dict[str, Any]) -> None:
        """Broker with its management UI, database, worker, Stripe relay and Prometheus."""
        services = compose["services"]
        assert {"rabbitmq", "postgres", "worker", "stripe-relay", "prometheus"} <= set(services)
        assert "management" in services["rabbitmq"]["image"]
        assert "15672:15672" in services["rabbitmq"]["ports"]
        assert services["worker"]["build"] == "."
        assert services["worker"].get("command", ["run"]) == ["run"]
        assert services["stripe-relay"]["command"] == ["stripe-relay"]
        assert services["stripe-relay"]["image"] == services["worker"]["image"]

    def test_worker_scales_without_collisions(self, compose: dict[str, Any]) -> None:
        """No fixed container name or host port on the worker: `--scale worker=2` works."""
        worker = compose["services"]["worker"]
        assert "container_name" not in worker
        for port in worker.get("ports", []):
            assert ":" not in str(port), f"fixed host port {port}"

    def test_dependencies_wait_for_health(self, compose: dict[str, Any]) -> None:
        """The worker waits for healthy PostgreSQL and RabbitMQ; every `service_healthy`
        names a service with a healthcheck (its own, or the image's HEALTHCHECK)."""
        services = compose["services"]
        worker_deps = services["worker"]["depends_on"]
        for dependency in ("postgres", "rabbitmq"):
            assert worker_deps[dependency]["condition"] == "service_healthy"
        for name, service in services.items():
            for dependency, spec in (service.get("depends_on") or {}).items():
                assert dependency in services, (name, dependency)
                if spec.get("condition") == "service_healthy":
                    target = services[dependency]
                    assert "healthcheck" in target or target.get("build") == ".", dependency

    def test_environment_names_real_settings(self, compose: dict[str, Any]) -> None:
        """Every BILLING_* variable the stack sets is a setting the worker reads."""
        known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
        for name, service in compose["services"].items():
            for variable in service.get("environment") or {}:
                if variable.startswith(ENV_PREFIX):
                    assert variable in known, (name, variable)

    def test_relay_healthcheck_probes_the_relay_port(self, compose: dict[str, Any]) -> None:
        """The relay's own healthcheck (the image's probes the worker's port) hits its port."""
        relay = compose["services"]["stripe-relay"]
        port = relay["environment"].get("BILLING_STRIPE_RELAY_PORT", DEFAULTS.stripe_relay_port)
        assert f"127.0.0.1:{port}/healthz" in " ".join(relay["healthcheck"]["test"])

    def test_mounted_files_exist(self, compose: dict[str, Any]) -> None:
        """Every file the stack mounts from the repository is in it."""
        mounts = [
            volume.split(":")[0]
            for service in compose["services"].values()
            for volume in service.get("volumes", [])
            if volume.startswith("./")
        ]
        assert mounts
        for source in mounts:
            assert (ROOT / source).is_file(), source

    def test_prometheus_finds_every_replica_on_the_right_ports(
        self, compose: dict[str, Any]
    ) -> None:
        """Prometheus resolves the worker and relay services (each replica an address) on
        the ports they serve, and loads the rule file where compose mounts it."""
        services = compose["services"]
        config = load_yaml(DEPLOY / "prometheus.yml")
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        ports = {
            "worker": int(
                services["worker"]["environment"].get("BILLING_HTTP_PORT", DEFAULTS.http_port)
            ),
            "stripe-relay": int(
                services["stripe-relay"]["environment"].get(
                    "BILLING_STRIPE_RELAY_PORT", DEFAULTS.stripe_relay_port
                )
            ),
            "api": int(services["api"]["environment"].get("BILLING_API_PORT", DEFAULTS.api_port)),
        }
        discovered = {
            name: sd["port"]
            for job in jobs.values()
            for sd in job.get("dns_sd_configs", [])
            for name in sd["names"]
        }
        assert discovered == ports
        mounted = {
            volume.split(":")[1]
            for volume in services["prometheus"]["volumes"]
            if volume.startswith("./")
        }
        assert set(config["rule_files"]) <= mounted


# --- alert rules -----------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml."""
    groups = load_yaml(DEPLOY / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


class TestAlertRules:
    """The alert rules: complete, and written against metrics that exist."""

    def test_every_rule_is_complete(self) -> None:
        """Each rule has a name, an expression, a duration, a severity and a summary."""
        rules = alert_rules()
        assert rules
        for rule in rules:
            assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
        names = [rule["alert"] for rule in rules]
        assert len(names) == len(set(names))

    def test_rules_use_only_exported_metrics(self) -> None:
        """Every series an expression selects is exported by the worker or the relay."""
        known = exported_series() | PROMETHEUS_SERIES
        for rule in alert_rules():
            used = metric_names(rule["expr"])
            assert used, rule["alert"]
            assert used <= known, (rule["alert"], used - known)

    @pytest.mark.parametrize(
        ("concern", "metric"),
        [
            ("dead letters growing", "billing_dead_letter_messages"),
            ("outbox lag", "billing_outbox_oldest_age_seconds"),
            ("consumer not ready", "billing_ready"),
        ],
    )
    def test_the_operational_concerns_are_alerted(self, concern: str, metric: str) -> None:
        """Dead letters growing, outbox lag and a consumer not ready each have a rule."""
        assert any(metric in metric_names(rule["expr"]) for rule in alert_rules()), concern


# --- Grafana dashboard -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """grafana-dashboard.json as data."""
    data: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text("utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries (rows excluded)."""
    return [p for p in dashboard["panels"] if p.get("type") != "row"]


def panel_series(dashboard: dict[str, Any]) -> set[str]:
    """Every series the dashboard's queries select."""
    return {
        name
        for panel in panels(dashboard)
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }


class TestDashboard:
    """The dashboard: importable, and showing every metric there is."""

    def test_is_importable(self, dashboard: dict[str, Any]) -> None:
        """A uid, unique panel ids, every query on the selectable Prometheus data source."""
        assert dashboard["uid"]
        assert dashboard["title"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels(dashboard):
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    def test_queries_use_only_exported_metrics(self, dashboard: dict[str, Any]) -> None:
        """Every series a panel selects is exported by the worker or the relay."""
        known = exported_series() | PROMETHEUS_SERIES
        for panel in panels(dashboard):
            for target in panel["targets"]:
                used = metric_names(target["expr"])
                assert used, (panel["title"], target["expr"])
                assert used <= known, (panel["title"], used - known)

    def test_every_exported_metric_has_a_panel(self, dashboard: dict[str, Any]) -> None:
        """No metric of the worker or the relay is left off the dashboard."""
        series = panel_series(dashboard)
        missing = {m for m in exported_metrics() if not covered(series, m)}
        assert not missing

    def test_every_documented_metric_has_a_panel(self, dashboard: dict[str, Any]) -> None:
        """Each metric of the README's metrics table (the contract's list and the rest) is
        on the dashboard."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        documented = set(
            re.findall(r"^\| `(billing_\w+)` \| (?:counter|gauge|histogram)", readme, re.M)
        )
        assert "billing_events_received_total" in documented
        series = panel_series(dashboard)
        assert {m for m in documented if not covered(series, m)} == set()

    @pytest.mark.parametrize(
        ("title", "metric"),
        [
            ("throughput", "billing_events_recorded_total"),
            ("reject", "billing_events_rejected_total"),
            ("batch latency", "billing_batch_duration_seconds_bucket"),
            ("outbox lag", "billing_outbox_oldest_age_seconds"),
            ("quota", "billing_outbox_published_total"),
        ],
    )
    def test_has_the_panels_operators_look_for(
        self, dashboard: dict[str, Any], title: str, metric: str
    ) -> None:
        """Throughput by outcome, rejects by reason, batch latency, outbox lag, quota events."""
        assert any(
            title in panel["title"].lower()
            and any(metric in metric_names(t["expr"]) for t in panel["targets"])
            for panel in panels(dashboard)
        ), title


class TestGrafanaProvisioning:
    """Grafana in the stack gets the data source and the dashboard without clicks."""

    def test_provisioning_points_at_the_stack(self, compose: dict[str, Any]) -> None:
        """The data source is the compose Prometheus; the dashboards folder is where compose
        mounts the dashboard."""
        source = load_yaml(DEPLOY / "grafana" / "datasource.yml")["datasources"][0]
        assert source["type"] == "prometheus"
        assert source["url"] == "http://prometheus:9090"
        provider = load_yaml(DEPLOY / "grafana" / "dashboards.yml")["providers"][0]
        mounted = [volume.split(":")[1] for volume in compose["services"]["grafana"]["volumes"]]
        assert any(Path(m).parent == Path(provider["options"]["path"]) for m in mounted)
