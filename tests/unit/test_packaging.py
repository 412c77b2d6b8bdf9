"""What ships: the wheel carries migrations and schemas; README and compose stay true."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    """Each BILLING_* variable the worker reads appears in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for field in Settings.model_fields:
        assert f"{ENV_PREFIX}{field.upper()}" in readme, field


def test_every_metric_is_documented() -> None:
    """Each exported metric family is named in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for metric in Metrics().registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert name in readme, name


def test_readme_shows_the_ci_test_command() -> None:
    """The README's test command is the one CI runs."""
    assert ".ci/run" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pytest" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_compose_file_is_valid() -> None:
    """compose.yaml validates against the Compose specification (offline, built-in schema)."""
    module = "check_jsonschema"
    result = subprocess.run(
        [sys.executable, "-m", module, "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_worker_as_non_root() -> None:
    """The image runs `billing-worker run` as an unprivileged user and exposes metrics."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'ENTRYPOINT \["billing-worker"\]', dockerfile)
    assert 'CMD ["run"]' in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert "EXPOSE 9464" in dockerfile


@pytest.mark.slow
def test_wheel_carries_migrations_schemas_and_script(tmp_path: Path) -> None:
    """The built wheel has the Alembic scripts, the JSON Schemas and the console script."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "billing_worker/_migrations/env.py" in names
    assert any(n.startswith("billing_worker/_migrations/versions/0001_") for n in names)
    assert "schemas/json/usage-event.v1.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "billing-worker = billing_worker.entrypoints.cli:main" in text
