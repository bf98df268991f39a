"""Run experiments: one results JSON per experiment (and repeat), a run summary, progress.

A failing experiment records ``error`` with its traceback tail and the run goes on. Ctrl-C
records the current experiment as interrupted, writes the summary and stops: every file in the
run directory is complete (each is written atomically).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import paths
from byok.common.errors import SkipExperiment
from byok.harness import results
from byok.harness.context import Context, Environment
from byok.harness.registry import Experiment


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    started: str
    ended: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    experiments: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.experiments:
            key = "skipped" if e["verdict"].startswith("skipped") else e["verdict"]
            out[key] = out.get(key, 0) + 1
        return out

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "started": self.started,
            "ended": self.ended, "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted, "counts": self.counts(),
            "experiments": self.experiments, "host": results.host_facts(),
        }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


def missing_needs(exp: Experiment, env: Environment) -> str | None:
    """Why ``exp`` cannot run in ``env`` (None if it can)."""
    from byok.common import proc
    from byok.common.errors import ByokError, ToolMissing
    from byok.guest import check_available

    if "stack-control" in exp.needs and env.stack is None:
        return "needs to stop/pause the embedded stack's servers (not possible on --cloud)"
    if "dm-crypt" in exp.needs:
        try:
            check_available()
        except ByokError as e:
            return f"no dm-crypt guest: {e.message}"
    if "qemu" in exp.needs:
        try:
            proc.which("qemu-img")
        except ToolMissing as e:
            return str(e)
    if "cinder" in exp.needs:
        from byok.harness import cinder

        return cinder.availability(env)
    return None


def _dm_crypt(exp: Experiment) -> str:
    from byok.common.errors import ByokError

    if "dm-crypt" not in exp.needs:
        return results.DM_CRYPT_UNUSED
    try:
        return results.dm_crypt_where()
    except ByokError:
        return "none: no guest backend works on this host (byok doctor)"


def run_experiments(
    selected: list[Experiment],
    env: Environment,
    *,
    out_dir: Path | None = None,
    repeat: int = 1,
    params: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
    on_result: Callable[[results.ExperimentResult], None] | None = None,
    keep_scratch: bool = False,
) -> RunSummary:
    run_id = new_run_id()
    run_dir = (out_dir or paths.results_dir() / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_id, run_dir, results.now())
    t_run = time.monotonic()
    host = results.host_facts() | results.environment_facts(env)
    try:
        for exp in selected:
            for r in range(repeat):
                res = results.ExperimentResult(
                    id=exp.id, title=exp.title, hurdle=exp.hurdle, hypothesis=exp.hypothesis,
                    run_id=run_id, repeat=r, started=results.now(),
                    host=host | {"dm_crypt": _dm_crypt(exp)},
                )
                t0 = time.monotonic()
                ctx = Context(exp, env, res, run_dir, progress=progress,
                              params=(params or {}).get(exp.id))
                interrupted = False
                try:
                    reason = missing_needs(exp, env)
                    if reason:
                        raise SkipExperiment(reason)
                    if progress:
                        progress(f"{exp.id}: {exp.title}")
                    exp.func(ctx)
                    if not res.checks:
                        res.verdict, res.error = "error", "the experiment recorded no checks"
                    elif all(c.passed for c in res.checks):
                        res.verdict = "supported"
                    else:
                        res.verdict = "refuted"
                except SkipExperiment as e:
                    res.verdict = f"skipped: {e}"
                except KeyboardInterrupt:
                    res.verdict, res.error = "error", "interrupted (Ctrl-C)"
                    interrupted = True
                except Exception as e:
                    res.verdict = "error"
                    res.error = f"{type(e).__name__}: {e}\n" + "".join(
                        traceback.format_exc().splitlines(keepends=True)[-12:])
                finally:
                    ctx.cleanup(keep_scratch=keep_scratch)
                    res.ended = results.now()
                    res.seconds = round(time.monotonic() - t0, 3)
                    problems = results.validate(res.to_json())
                    if problems:  # a malformed record is an error, written for inspection
                        res.verdict = "error"
                        res.error = (res.error or "") + "invalid results: " + "; ".join(problems)
                    path = results.write(res, run_dir)
                    summary.experiments.append({"id": exp.id, "repeat": r,
                                                "verdict": res.verdict,
                                                "seconds": res.seconds, "file": path.name})
                    if on_result:
                        on_result(res)
                if interrupted:
                    summary.interrupted = True
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        summary.interrupted = True
        done = {e["id"] for e in summary.experiments}
        summary.experiments += [{"id": e.id, "verdict": "not run (interrupted)"}
                                for e in selected if e.id not in done]
    finally:
        from byok.harness import cinder

        cinder.release()  # the Cinder services this run started (if any), not others'
        with contextlib.suppress(OSError):
            (run_dir / "scratch").rmdir()  # only if every experiment cleaned up after itself
        summary.ended = results.now()
        summary.seconds = time.monotonic() - t_run
        paths.write_private(run_dir / "run.json", json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
