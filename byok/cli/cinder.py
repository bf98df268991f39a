"""``byok cinder up|down|status``: the patched Cinder 29 as services over RabbitMQ."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byok.cli.common import err, out
from byok.common.errors import StackError


def register(sub, fmt) -> None:
    cp = sub.add_parser(
        "cinder", formatter_class=fmt,
        help="the patched Cinder 29 as services: api, scheduler, volume, backup over RabbitMQ",
        description=(
            "Run the patch series (openstack/cinder/*.patch) as a Cinder deployment beside the\n"
            "embedded stack: cinder-api under gunicorn (keystonemiddleware, a block-storage\n"
            "catalog entry), cinder-scheduler, cinder-volume (a local-folder NfsDriver) and\n"
            "cinder-backup (posix), over this stack's own RabbitMQ on 127.0.0.1. The services\n"
            "run from .venv-openstack (./dev openstack). Needs: byok stack up.\n\n"
            "Examples:\n"
            "  byok cinder up && byok cinder status --json\n"
            "  byok cinder up --conf /opt/stack/cinder.conf   # also read a devstack-written file\n"
            "  byok cinder down"
        ),
    )
    cp.add_argument("--state-dir", type=Path, default=None,
                    help="stack state directory (default: .byok/stack or $BYOK_STACK_DIR)")
    cs = cp.add_subparsers(dest="action", metavar="ACTION")
    cs.required = True
    up = cs.add_parser("up", formatter_class=fmt, help="start what is not running (idempotent)")
    up.add_argument("--api-port", type=int, help="cinder-api port (default 18776, "
                                                 "$BYOK_CINDER_PORT)")
    up.add_argument("--rabbitmq-port", type=int,
                    help="AMQP port N; N+1, N+2: Erlang distribution, epmd (default 15682, "
                         "$BYOK_RABBITMQ_PORT)")
    up.add_argument("--backend", choices=("byok", "barbican"),
                    help="castellan backend of the services (default byok)")
    up.add_argument("--conf", action="append", type=Path, metavar="FILE",
                    help="another cinder.conf read after byok's (e.g. the devstack plugin's); "
                         "repeatable; remembered until --no-conf")
    up.add_argument("--no-conf", action="store_true", help="forget earlier --conf files")
    up.add_argument("--json", action="store_true", help="print status as JSON")
    up.set_defaults(func=_up)
    down = cs.add_parser("down", formatter_class=fmt,
                         help="stop the services and the broker this stack started")
    down.set_defaults(func=_down)
    st = cs.add_parser("status", formatter_class=fmt,
                       help="each service's health (os-services, AMQP login), start-up time")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)


def _services(args: argparse.Namespace, **overrides):
    from byok.stack.cinder import CinderServices, CinderSettings
    from byok.stack.manager import Stack

    stack = Stack.at(args.state_dir)
    return CinderServices(stack, CinderSettings.load(stack.cfg.state_dir, **overrides))


def _up(args: argparse.Namespace) -> int:
    extra = None
    if args.no_conf:
        extra = []
    if args.conf:
        extra = [str(p.resolve()) for p in args.conf]
    svc = _services(args, api_port=args.api_port, rabbitmq_port=args.rabbitmq_port,
                    backend=args.backend, extra_conf=extra)
    status = svc.up(progress=lambda m: err.print(f"[dim]…[/] {m}"))
    _print(status, as_json=args.json)
    return 0 if status["healthy"] else StackError.exit_code


def _down(args: argparse.Namespace) -> int:
    for name, was in _services(args).down().items():
        out.print(f"{name}: {'stopped' if was else 'not running'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _services(args).status()
    _print(status, as_json=args.json)
    return 0 if status["healthy"] else StackError.exit_code


def _print(status: dict, *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(status))
        return
    from rich.table import Table

    t = Table(title=f"byok cinder ({status['api_url']}, key manager {status['backend']})")
    for col in ("service", "pid", "healthy", "start-up s", "detail"):
        t.add_column(col)
    for name, s in status["services"].items():
        detail = s.get("url", "") if name in ("cinder-api", "rabbitmq") else ", ".join(
            f"{r['host']} {r['state']}" for r in s.get("os_services", []))
        t.add_row(name, str(s.get("pid") or "-"),
                  "[green]yes[/]" if s["healthy"] else "[red]no[/]",
                  f"{s['startup_seconds']:.2f}" if s.get("startup_seconds") else "-", detail)
    out.print(t)
