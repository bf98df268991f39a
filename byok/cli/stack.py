"""``byok stack up|down|status|env``: the embedded real Keystone + Barbican."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byok.cli.common import err, out
from byok.common.errors import StackError, UsageError


def register(sub, fmt) -> None:
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
    )
    ss = sp.add_subparsers(dest="action", metavar="ACTION")
    ss.required = True
    up = ss.add_parser("up", formatter_class=fmt, help="bootstrap once, start, seed (idempotent)")
    up.add_argument("--keystone-port", type=int, help="Keystone port (default 15000)")
    up.add_argument("--barbican-port", type=int, help="Barbican port (default 19311)")
    up.add_argument("--reset", action="store_true", help="delete this stack's state first")
    up.add_argument("--json", action="store_true", help="print status as JSON")
    up.set_defaults(func=_up)
    down = ss.add_parser("down", formatter_class=fmt, help="stop the servers this stack started")
    down.set_defaults(func=_down)
    st = ss.add_parser("status", formatter_class=fmt, help="health, ports, pids, start-up time")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)
    env = ss.add_parser(
        "env", formatter_class=fmt,
        help="print 'export OS_CLIENT_CONFIG_FILE=...' for the stack's clouds.yaml",
    )
    env.set_defaults(func=_env)


def _stack(args: argparse.Namespace):
    from byok.stack.manager import Stack

    return Stack.at(args.state_dir, keystone_port=getattr(args, "keystone_port", None),
                    barbican_port=getattr(args, "barbican_port", None))


def _up(args: argparse.Namespace) -> int:
    status = _stack(args).up(reset=args.reset, progress=lambda m: err.print(f"[dim]…[/] {m}"))
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else StackError.exit_code


def _down(args: argparse.Namespace) -> int:
    for name, was in _stack(args).down().items():
        out.print(f"{name}: {'stopped' if was else 'not running'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else StackError.exit_code


def _env(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not stack.cfg.settings_file.exists():
        raise UsageError("no stack here yet", hint="run: byok stack up")
    out.print(f"export OS_CLIENT_CONFIG_FILE={stack.write_clouds_yaml()}")
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
        t.add_row(name, s["url"], str(s["pid"] or "-"),
                  "[green]yes[/]" if s["healthy"] else "[red]no[/]",
                  f"{s['startup_seconds']:.2f}" if s["startup_seconds"] else "-")
    out.print(t)
    if status.get("clouds_yaml"):
        out.print(f"clouds.yaml: {status['clouds_yaml']}  (byok stack env)")
