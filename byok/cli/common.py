"""What every command group shares: the two consoles, identity arguments, size arguments."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console

from byok.common.errors import UsageError
from byok.common.units import parse_size

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

Handler = Callable[[argparse.Namespace], int | None]


def add_identity_args(p: argparse.ArgumentParser, *, default_user: str | None = None) -> None:
    g = p.add_mutually_exclusive_group(required=default_user is None)
    g.add_argument(
        "--as", dest="as_user", metavar="USER", default=default_user,
        help="a seeded user of the embedded stack (alice, carol, bob, cinder, nova, admin)",
    )
    g.add_argument(
        "--cloud", metavar="NAME",
        help="a cloud from clouds.yaml instead (devstack, production: OS_CLIENT_CONFIG_FILE)",
    )


def identity_from_args(args: argparse.Namespace) -> Any:
    """The identity ``--as USER`` (embedded stack) or ``--cloud NAME`` names."""
    from byok.keys.identity import Identity

    if getattr(args, "cloud", None):
        return Identity.from_cloud(args.cloud)
    from byok.stack.manager import Stack

    return Stack.at(getattr(args, "state_dir", None)).identity(args.as_user)


def size(text: str) -> int:
    """argparse type for sizes (4096, 64M, 1G)."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def print_doc(doc: dict, *, as_json: bool, width: int = 14) -> None:
    """A result as JSON, or as aligned ``key  value`` lines."""
    if as_json:
        out.print_json(json.dumps(doc))
        return
    for k, v in doc.items():
        out.print(f"[bold]{k:>{width}}[/]  {v}")


def progress_line(message: str) -> None:
    err.print(f"[dim]… {message}[/]")
