"""From a finished run to what people read: the report (with the latest benchmarks) and the
spec's evidence blocks; and the README's main job, which runs everything and publishes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byok.common import paths
from byok.common.errors import UsageError

DEFAULT_SPEC = Path("design") / "user-supplied-keys.rst"


def latest_bench(run_dir: Path) -> dict | None:
    """Benchmarks to show in a report: the run's own bench.json, else bench/latest.json."""
    root = paths.project_root()
    for candidate in (run_dir / "bench.json", root / "bench" / "latest.json" if root else None):
        if candidate and candidate.exists():
            return json.loads(candidate.read_text())
    return None


def report(run_dir: Path) -> Path:
    """``run_dir/report.md`` (+ plots) from the results JSON only.

    :raises UsageError: the directory holds no experiment results.
    """
    from byok.harness import report as rpt

    if not run_dir.is_dir() or not list(run_dir.glob("E*.json")):
        raise UsageError(f"{run_dir} holds no experiment results",
                         hint="run them first: byok experiments run")
    return rpt.render(run_dir, bench=latest_bench(run_dir))


def inject_spec(run_dir: Path, spec: Path) -> bool:
    """Regenerate ``spec``'s evidence blocks from ``run_dir``; True if the text changed."""
    from byok.harness import spec as specmod
    from byok.harness.results import load_run

    run_json = run_dir / "run.json"
    run_id = json.loads(run_json.read_text())["run_id"] if run_json.exists() else run_dir.name
    return specmod.update(spec, load_run(run_dir), run_id)


def default_spec() -> Path | None:
    root = paths.project_root()
    spec = root / DEFAULT_SPEC if root else None
    return spec if spec and spec.exists() else None


@dataclass
class Published:
    summary: Any               # byok.harness.runner.RunSummary
    report: Path | None
    spec: Path | None
    spec_changed: bool = False

    @property
    def exit_code(self) -> int:
        from byok.common.errors import ExperimentError

        counts = self.summary.counts()
        if self.summary.interrupted:
            return 130
        return ExperimentError.exit_code if counts.get("error") or counts.get("refuted") else 0


def publish(summary: Any, *, report_too: bool, spec: Path | None = None) -> Published:
    """Report (and spec evidence) for a finished run."""
    out = Published(summary, None, None)
    if report_too:
        out.report = report(summary.run_dir)
        if spec:
            out.spec, out.spec_changed = spec, inject_spec(summary.run_dir, spec)
    return out


def main_job(run: Callable[[Any], Any], *, spec: Path | None, no_spec: bool,
             progress: Callable[[str], None] | None = None) -> Published:
    """The README's main job: the embedded stack up (if needed), every experiment through
    ``run(env)``, the report, the spec's evidence blocks; the stack stopped if we started it."""
    from byok.harness.context import Environment
    from byok.stack.manager import Stack

    with Stack.at().running(progress=progress) as stack:
        summary = run(Environment.embedded(stack))
    target = None if no_spec else (spec or default_spec())
    return publish(summary, report_too=True, spec=target if target and target.exists() else None)
