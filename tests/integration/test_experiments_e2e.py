"""Two fast experiments end to end on the real stack, through the runner and the report, as
`byok experiments run` does it (issue 7)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from byok.harness import registry, report, results, runner
from byok.harness.context import Environment

pytestmark = pytest.mark.stack


def test_fast_experiments_run_end_to_end(stack, tmp_path):
    selected = registry.select(registry.discover(), ["E04", "E15"])
    summary = runner.run_experiments(selected, Environment.embedded(stack), out_dir=tmp_path)
    assert [e["verdict"] for e in summary.experiments] == ["supported", "supported"]
    for f in tmp_path.glob("E*.json"):
        doc = json.loads(f.read_text())
        assert results.validate(doc) == []
        assert doc["host"]["barbican"] == "23.0.0" and doc["host"]["castellan"] == "5.8.0"
        assert all(c["passed"] for c in doc["checks"]) and len(doc["checks"]) >= 5
    text = report.render(tmp_path).read_text()
    assert "E04" in text and "**supported**" in text
    assert not list((tmp_path / "scratch").glob("*/pool/data/*.img"))  # cleaned up


def test_cli_list_and_run_one(stack, tmp_path):
    byok = [sys.executable, "-m", "byok.cli", "experiments"]
    r = subprocess.run([*byok, "list", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and len(json.loads(r.stdout)) >= 16
    out = tmp_path / "run"
    r = subprocess.run([*byok, "run", "E05", "--out", str(out), "--report"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "E05.json").exists() and (out / "report.md").exists()
    r = subprocess.run([*byok, "run", "E99"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 16 and "unknown experiment" in r.stderr
