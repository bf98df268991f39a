"""``byok attach`` / ``byok detach``: a user's key unlocks a volume on real dm-crypt."""

from __future__ import annotations

import argparse
from pathlib import Path

from byok.attach import session
from byok.cli.common import add_identity_args, err, identity_from_args, out, print_doc, size
from byok.common.errors import KeyAccessDenied, UsageError, WrongKey


def register(sub, fmt) -> None:
    ap = sub.add_parser(
        "attach", formatter_class=fmt,
        help="unlock a volume with a user's key through os-brick on real dm-crypt (guest kernel)",
        description=(
            "Resolve the user's key, check the volume (never auto-format), and attach it with\n"
            "os-brick's LUKS encryptor on real dm-crypt in a guest kernel (byok doctor).\n"
            "Without --hold the session is: attach, optional --write/--read, detach.\n"
            "With --hold the mapping stays open until 'byok detach VOLUME' (or Ctrl-C).\n\n"
            "Examples:\n"
            "  truncate -s 64M vol.img\n"
            "  byok attach vol.img --key-ref REF --as alice --new --write 7:4M\n"
            "  byok attach vol.img --key-ref REF --as alice --read 4M\n"
            f"  byok attach vol.img --key-ref OTHER --as alice      # exit {WrongKey.exit_code}: "
            "wrong key\n"
            f"  byok attach vol.img --key-ref REF --as bob          # exit "
            f"{KeyAccessDenied.exit_code}: not his key"
        ),
    )
    ap.add_argument("volume", type=Path, help="a pool volume id or a volume image file")
    ap.add_argument("--key-ref", help="the user's key (default: the pool volume's key)")
    add_identity_args(ap)
    ap.add_argument("--provider", choices=("luks", "luks2"), default="luks2")
    ap.add_argument("--new", action="store_true",
                    help="the volume is new: format it if (and only if) it is entirely blank")
    ap.add_argument("--write", metavar="SEED:SIZE", type=_pattern,
                    help="write a deterministic pattern")
    ap.add_argument("--read", metavar="SIZE", type=size,
                    help="print the sha256 of the first SIZE bytes")
    ap.add_argument("--hold", action="store_true", help="keep attached until 'byok detach'")
    ap.add_argument("--pool", type=Path, default=None, help="pool directory (pool volume ids)")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=_attach)
    dp = sub.add_parser("detach", formatter_class=fmt, help="end a 'byok attach --hold' session")
    dp.add_argument("volume", type=Path)
    dp.set_defaults(func=_detach)


def _pattern(text: str) -> tuple[int, int]:
    seed, _, length = text.partition(":")
    try:
        return int(seed), size(length or "4M")
    except ValueError:
        raise UsageError(f"not SEED:SIZE: {text!r} (example: 7:4M)") from None


def _attach(args: argparse.Namespace) -> int:
    from byok.lifecycle import attach_target

    hook, v = attach_target.prepare(identity_from_args(args), args.volume, key_ref=args.key_ref,
                                    provider=args.provider, new=args.new, pool=args.pool)
    summary = session.run(
        hook, v, session.Plan(write=args.write, read=args.read, hold=args.hold), args.volume,
        on_hold=lambda: err.print(f"attached {args.volume} at /dev/mapper/{v.mapper_name} (in "
                                  f"the guest); run 'byok detach {args.volume}' to release"),
        progress=lambda s: err.print(f"[dim]… {s}[/]"))
    print_doc(summary, as_json=args.json)
    return 0


def _detach(args: argparse.Namespace) -> int:
    out.print(f"detach requested from session {session.request_detach(args.volume)}")
    return 0
