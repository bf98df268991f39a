"""From a finished run to what people read: the report (with the latest benchmarks) and the
spec's evidence blocks; and the README's main job, which runs everything and publishes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common import paths
from byok.common.errors import UsageError

DEFAULT_SPEC = Path("design") / "user-supplied-keys.rst"
DESIGN = Path("design")


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


def evidence_specs() -> list[Path]:
    """Every ``design/*.rst`` with at least one evidence block (the core spec, its follow-ups,
    the nova-spec): the main job refreshes them all from one run."""
    from byok.harness import spec as specmod

    root = paths.project_root()
    if not root or not (root / DESIGN).is_dir():
        return []
    return [p for p in sorted((root / DESIGN).glob("*.rst"))
            if any(specmod.START.match(ln) for ln in p.read_text().splitlines())]


@dataclass
class Published:
    summary: Any               # byok.harness.runner.RunSummary
    report: Path | None
    spec: Path | None
    spec_changed: bool = False
    specs: dict[Path, bool] = field(default_factory=dict)  # every spec refreshed: changed?

    @property
    def exit_code(self) -> int:
        from byok.common.errors import ExperimentError

        counts = self.summary.counts()
        if self.summary.interrupted:
            return 130
        return ExperimentError.exit_code if counts.get("error") or counts.get("refuted") else 0


def publish(summary: Any, *, report_too: bool, spec: Path | None = None,
            specs: list[Path] | None = None) -> Published:
    """Report (and spec evidence: ``spec``, or each of ``specs``) for a finished run."""
    out = Published(summary, None, None)
    if report_too:
        out.report = report(summary.run_dir)
        for target in ([spec] if spec else []) + [s for s in specs or [] if s != spec]:
            out.specs[target] = inject_spec(summary.run_dir, target)
        if out.specs:
            out.spec = next(iter(out.specs))
            out.spec_changed = out.specs[out.spec]
    return out


def main_job(run: Callable[[Any], Any], *, spec: Path | None, no_spec: bool,
             progress: Callable[[str], None] | None = None) -> Published:
    """The README's main job: the embedded stack up (if needed), every experiment through
    ``run(env)``, the report, the evidence blocks of ``spec`` (default: of every design/*.rst
    that has them); the stack stopped if we started it."""
    from byok.harness.context import Environment
    from byok.stack.manager import Stack

    with Stack.at().running(progress=progress) as stack:
        summary = run(Environment.embedded(stack))
    if no_spec:
        return publish(summary, report_too=True)
    if spec:
        return publish(summary, report_too=True, spec=spec if spec.exists() else None)
    return publish(summary, report_too=True, specs=evidence_specs())
