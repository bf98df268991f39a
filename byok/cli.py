"""The ``byok`` command. Thin: it parses arguments, calls the modules, prints results.

Exit codes (also in README): 0 ok, 2 usage, 3 invalid key ref, 4 key not found, 5 access denied
or wrong key, 6 key service unavailable, 7 key type mismatch, 8 not LUKS / header corrupt,
9 no device-mapper, 10 guest error, 11 stack error, 12 tool missing, 13 command failed,
14 volume error, 15 recovery error, 16 experiment error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich_argparse import RawDescriptionRichHelpFormatter

from byok.errors import ByokError, UsageError

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

Handler = Callable[[argparse.Namespace], int | None]


def _parser() -> argparse.ArgumentParser:
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
            "  byok experiments list          what the research harness measures\n"
            "  byok experiments run           run them all; then: byok report RUN_DIR"
        ),
    )
    p.add_argument("--debug", action="store_true", help="log every command byok runs")
    sub = p.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub, fmt)
    return p


# --- stack -----------------------------------------------------------------------------------


def _stack_parser(sub, fmt) -> None:
    sp = sub.add_parser(
        "stack",
        formatter_class=fmt,
        help="the embedded real Keystone + Barbican (up, down, status, env)",
        description=(
            "Run a real Keystone (sqlite, fernet) and a real Barbican (sqlite, simple_crypto,\n"
            "keystonemiddleware) on 127.0.0.1, all state in one directory.\n\n"
            "Seeded identities (clouds in clouds.yaml): byok-alice and byok-carol in\n"
            "alice-project, byok-bob in bob-project, service users byok-cinder and byok-nova,\n"
            "and byok-admin. Passwords stay in the state dir (0600) and are never printed."
        ),
    )
    sp.add_argument(
        "--state-dir", type=Path, default=None,
        help="stack state directory (default: .byok/stack in the checkout, or $BYOK_STACK_DIR)",
    )  # fmt: skip
    ss = sp.add_subparsers(dest="action", metavar="ACTION")
    ss.required = True
    up = ss.add_parser("up", formatter_class=fmt, help="bootstrap once, start, seed (idempotent)")
    up.add_argument("--keystone-port", type=int, help="Keystone port (default 15000)")
    up.add_argument("--barbican-port", type=int, help="Barbican port (default 19311)")
    up.add_argument("--reset", action="store_true", help="delete this stack's state first")
    up.add_argument("--json", action="store_true", help="print status as JSON")
    up.set_defaults(func=_stack_up)
    down = ss.add_parser("down", formatter_class=fmt, help="stop the servers this stack started")
    down.set_defaults(func=_stack_down)
    st = ss.add_parser("status", formatter_class=fmt, help="health, ports, pids, start-up time")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_stack_status)
    env = ss.add_parser(
        "env", formatter_class=fmt,
        help="print 'export OS_CLIENT_CONFIG_FILE=...' for the stack's clouds.yaml",
    )  # fmt: skip
    env.set_defaults(func=_stack_env)


def _stack(args: argparse.Namespace):
    from byok.stack.manager import Stack

    return Stack.at(
        args.state_dir,
        keystone_port=getattr(args, "keystone_port", None),
        barbican_port=getattr(args, "barbican_port", None),
    )


def _stack_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    status = stack.up(reset=args.reset, progress=lambda m: err.print(f"[dim]…[/] {m}"))
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else 11


def _stack_down(args: argparse.Namespace) -> int:
    stopped = _stack(args).down()
    for name, was in stopped.items():
        out.print(f"{name}: {'stopped' if was else 'not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else 1


def _stack_env(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not stack.cfg.settings_file.exists():
        raise UsageError("no stack here yet", hint="run: byok stack up")
    path = stack.write_clouds_yaml()
    out.print(f"export OS_CLIENT_CONFIG_FILE={path}")
    err.print("[dim]# clouds: " + ", ".join(stack.status()["clouds"]) + "[/]")
    return 0


def _print_status(status: dict, *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(status))
        return
    from rich.table import Table

    t = Table(title=f"byok stack ({status['state_dir']})")
    for col in ("service", "url", "pid", "healthy", "start-up s"):
        t.add_column(col)
    for name, s in status["services"].items():
        t.add_row(
            name, s["url"], str(s["pid"] or "-"),
            "[green]yes[/]" if s["healthy"] else "[red]no[/]",
            f"{s['startup_seconds']:.2f}" if s["startup_seconds"] else "-",
        )  # fmt: skip
    out.print(t)
    if status.get("clouds_yaml"):
        out.print(f"clouds.yaml: {status['clouds_yaml']}  (byok stack env)")


_REGISTRARS: list[Callable] = [_stack_parser]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        for noisy in ("castellan", "barbicanclient", "keystoneauth", "os_brick", "stevedore"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except ByokError as e:
        err.print(f"[red]error:[/] {e.message}")
        if e.hint:
            err.print(f"[yellow]hint:[/] {e.hint}")
        return e.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
