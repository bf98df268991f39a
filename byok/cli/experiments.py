"""``byok experiments list|run``, ``byok report``, ``byok main-job``: the research harness."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from byok.cli.common import err, out
from byok.harness import publish


def register(sub, fmt) -> None:
    ep = sub.add_parser(
        "experiments", formatter_class=fmt, help="the research harness: list and run experiments",
        description=(
            "Each experiment states a hypothesis tied to a spec hurdle (H1-H10), runs on the\n"
            "real path and records measurements and checks; its verdict comes from its checks.\n"
            "One results JSON per experiment goes to the run directory, plus run.json.\n\n"
            "Examples:\n"
            "  byok experiments list\n"
            "  byok experiments run                 # all, on the embedded stack\n"
            "  byok experiments run E04 E11 --repeat 3\n"
            "  byok experiments run --cloud mycloud # clouds mycloud-alice, mycloud-bob, ...\n"
            "  byok report results/<run>"
        ),
    )
    es = ep.add_subparsers(dest="action", metavar="ACTION")
    es.required = True
    ls = es.add_parser("list", formatter_class=fmt, help="the experiments, as a table")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    rn = es.add_parser("run", formatter_class=fmt, help="run experiments, write results")
    rn.add_argument("ids", nargs="*", metavar="ID", help="experiment ids (default: all)")
    rn.add_argument("--cloud", help="run against clouds NAME-alice, NAME-bob, NAME-carol, "
                                    "NAME-cinder, NAME-nova from clouds.yaml")
    rn.add_argument("--out", type=Path, help="run directory (default results/<run-id>)")
    rn.add_argument("--repeat", type=int, default=1, help="run each experiment N times")
    rn.add_argument("--keep-scratch", action="store_true", help="keep volumes and temp files")
    rn.add_argument("--report", action="store_true", help="write report.md afterwards")
    rn.set_defaults(func=_run)
    rp = sub.add_parser(
        "report", formatter_class=fmt, help="report.md (+ plots) from a results run",
        description=(
            "Build RUN_DIR/report.md and RUN_DIR/plots/*.png from the results JSON only.\n"
            "With --spec, also regenerate the spec's evidence blocks from this run\n"
            "(idempotent: the same run gives the same text).\n\n"
            "Example:\n"
            "  byok report results/20261125T101500-ab12 --spec design/user-supplied-keys.rst"
        ),
    )
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rp.add_argument("--spec", type=Path, help="spec file whose evidence blocks to regenerate")
    rp.set_defaults(func=_report)
    mp = sub.add_parser(
        "main-job", formatter_class=fmt,
        help="the README's main job: stack up, every experiment, report, spec evidence",
    )
    mp.add_argument("--out", type=Path, help="run directory (default results/<run-id>)")
    mp.add_argument("--spec", type=Path, default=None,
                    help="spec to refresh (default: every design/*.rst with evidence blocks)")
    mp.add_argument("--no-spec", action="store_true", help="do not touch the spec")
    mp.set_defaults(func=_main_job, repeat=1, keep_scratch=False, ids=[])


def _list(args: argparse.Namespace) -> int:
    from byok.harness.registry import discover

    reg = discover()
    if args.json:
        out.print_json(json.dumps([{"id": e.id, "title": e.title, "hurdle": e.hurdle,
                                    "hypothesis": e.hypothesis, "needs": sorted(e.needs)}
                                   for e in reg.values()]))
        return 0
    from rich.table import Table

    t = Table(title="byok experiments")
    for col in ("id", "hurdle", "title", "needs"):
        t.add_column(col)
    for e in reg.values():
        t.add_row(e.id, e.hurdle, e.title, ", ".join(sorted(e.needs)))
    out.print(t)
    return 0


def _with_progress(args: argparse.Namespace):
    """``run(env)`` that runs the selected experiments with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from byok.harness.registry import discover, select
    from byok.harness.runner import run_experiments

    selected = select(discover(), args.ids)
    colors = {"supported": "green", "refuted": "red", "error": "red"}

    def run(env):
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
            task = bar.add_task("experiments", total=len(selected) * args.repeat)

            def on_result(res) -> None:
                bar.console.print(
                    f"{res.id} [{colors.get(res.verdict, 'yellow')}]{res.verdict}[/] "
                    f"({sum(c.passed for c in res.checks)}/{len(res.checks)} checks, "
                    f"{res.seconds:.1f} s) {res.title}")
                bar.advance(task)

            return run_experiments(selected, env, out_dir=args.out, repeat=args.repeat,
                                   progress=lambda m: bar.update(task, description=m[:70]),
                                   on_result=on_result, keep_scratch=args.keep_scratch)

    return run


def _print(p: publish.Published) -> int:
    s = p.summary
    err.print(f"run {s.run_id}: " + ", ".join(f"{v} {k}" for k, v in s.counts().items())
              + f" in {s.seconds:.0f} s" + (" [red](interrupted)[/]" if s.interrupted else ""))
    out.print(f"results: {s.run_dir}")
    if p.report:
        out.print(f"report:  {p.report}")
    for spec, changed in p.specs.items():
        out.print(f"spec:    {spec} ({'evidence regenerated' if changed else 'unchanged'})")
    return p.exit_code


def _run(args: argparse.Namespace) -> int:
    from byok.harness.context import Environment
    from byok.stack.manager import Stack

    run = _with_progress(args)
    with contextlib.ExitStack() as es:
        if args.cloud:
            env = Environment.from_cloud(args.cloud)
        else:
            stack = es.enter_context(Stack.at().running(progress=lambda m: err.print(f"… {m}")))
            env = Environment.embedded(stack)
        summary = run(env)
    return _print(publish.publish(summary, report_too=args.report))


def _report(args: argparse.Namespace) -> int:
    out.print(f"report: {publish.report(args.run_dir)}")
    if args.spec:
        changed = publish.inject_spec(args.run_dir, args.spec)
        out.print(f"spec:    {args.spec} ({'evidence regenerated' if changed else 'unchanged'})")
    return 0


def _main_job(args: argparse.Namespace) -> int:
    return _print(publish.main_job(_with_progress(args), spec=args.spec, no_spec=args.no_spec,
                                   progress=lambda m: err.print(f"… {m}")))
