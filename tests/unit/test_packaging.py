"""What ships: the wheel carries what the image runs; the README stays true.

The Dockerfile and compose.yaml are checked in ``test_deploy_files.py``.
"""

from __future__ import annotations

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


@pytest.mark.slow
def test_wheel_carries_migrations_schemas_and_script(tmp_path: Path) -> None:
    """The wheel the image installs has every module, the Alembic scripts, the built-in
    price book, the JSON Schemas, the deployment files and the console script."""
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
    assert "billing_worker/pricebooks/default.toml" in names
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in ("billing_worker", "schemas")
        for path in (ROOT / package).rglob("*.py")
    }
    assert modules <= set(names), modules - set(names)
    deploy = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "billing_worker" / "deploy").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert deploy <= set(names), deploy - set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "billing-worker = billing_worker.entrypoints.cli:main" in text
