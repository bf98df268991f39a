"""The ``byok`` command: one module per command group; each handler parses, calls one function
of the layer below, prints. Exit codes: ``byok exit-codes`` (the table in README)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.markup import escape
from rich_argparse import RawDescriptionRichHelpFormatter

from byok.cli import attach, bench, cinder, experiments, guest, key, recover, stack, volume
from byok.cli.common import Handler, err, out
from byok.common.errors import ByokError, exit_codes

GROUPS = (stack, cinder, key, bench, attach, volume, recover, experiments, guest)
NOISY = ("castellan", "barbicanclient", "keystoneauth", "os_brick", "stevedore")


def parser() -> argparse.ArgumentParser:
    fmt = RawDescriptionRichHelpFormatter
    p = argparse.ArgumentParser(
        prog="byok",
        formatter_class=fmt,
        description=(
            "User-supplied-key volume encryption for OpenStack Cinder: an attach-path hook,\n"
            "a castellan backend and a research harness, on real Keystone, Barbican,\n"
            "cryptsetup, os-brick and dm-crypt.\n\n"
            "Start here:\n"
            "  byok stack up                  real Keystone + Barbican on 127.0.0.1\n"
            "  byok doctor                    which guest kernel runs dm-crypt on this host\n"
            "  byok experiments list          what the research harness measures\n"
            "  byok experiments run           run them all; then: byok report RUN_DIR"
        ),
    )
    p.add_argument("--debug", action="store_true", help="log every command byok runs")
    sub = p.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub, fmt)
    ec = sub.add_parser("exit-codes", formatter_class=fmt,
                        help="what each exit status of byok means (Markdown table)")
    ec.set_defaults(func=_exit_codes)
    return p


def exit_code_table() -> str:
    """The Markdown table of :func:`byok.common.errors.exit_codes` (the README prints it)."""
    rows = ["| exit | error | meaning |", "|---|---|---|"]
    rows += [f"| {code} | `{name}` | {doc} |" for code, name, doc in exit_codes()]
    return "\n".join(rows)


def _exit_codes(_args: argparse.Namespace) -> int:
    out.print(exit_code_table(), markup=False, highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    args = parser().parse_args(argv)
    if not args.debug:  # eventlet's and openstacksdk's deprecation banners are not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except ByokError as e:
        err.print(f"[red]error:[/] {escape(e.message)}")
        if e.hint:
            err.print(f"[yellow]hint:[/] {escape(e.hint)}")
        return e.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
