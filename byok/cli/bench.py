"""``byok bench WHICH``: side-by-side ratios against a limit measured in the same run."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from byok import bench
from byok.cli.common import add_identity_args, err, identity_from_args


def register(sub, fmt) -> None:
    bp = sub.add_parser(
        "bench", formatter_class=fmt, help="benchmarks: side-by-side ratios as JSON",
        description=(
            "Each benchmark measures two things interleaved in one run and reports p50/p95,\n"
            "the ratio and its target. Runs on the embedded stack (started and stopped if\n"
            "needed) or on --cloud."
        ),
    )
    bp.add_argument("which", choices=(*bench.BENCHES, "all"),
                    help="which benchmark ('all' runs every one, the suite last)")
    bp.add_argument("--skip-suite", action="store_true",
                    help="with 'all': leave out the full experiment run (about 5 minutes)")
    bp.add_argument("--n", type=int, default=30,
                    help="samples per side (default 30; cinder: rounds, at most 10)")
    bp.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    add_identity_args(bp, default_user="alice")
    bp.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from byok.stack.manager import Stack

    wanted: tuple[str, ...] = bench.BENCHES if args.which == "all" else (args.which,)
    if args.which == "all" and args.skip_suite:
        wanted = tuple(b for b in wanted if b != "suite")
    with contextlib.ExitStack() as es:
        stack = None
        if args.cloud:
            ident = identity_from_args(args)
        else:
            stack = es.enter_context(Stack.at().running(progress=lambda m: err.print(f"… {m}")))
            ident = stack.identity(args.as_user)
        results = bench.run(wanted, ident, stack, n=args.n, progress=lambda m: err.print(f"… {m}"))
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
