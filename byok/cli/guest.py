"""``byok doctor`` and ``byok guest prepare``: which guest kernels run real dm-crypt here."""

from __future__ import annotations

import argparse
import json

from byok.cli.common import err, out
from byok.common.errors import ByokError, GuestError

BACKEND_NAMES = ("host", "qemu-kvm", "uml", "uml-newer", "qemu-tcg")


def register(sub, fmt) -> None:
    p = sub.add_parser(
        "doctor", formatter_class=fmt,
        help="which guest kernels can run real dm-crypt here, and why not",
        description=(
            "Probe every guest backend (host device-mapper, QEMU/KVM, User-Mode Linux, the\n"
            "newer UML, QEMU TCG) by booting a tiny job that opens a LUKS volume, and print\n"
            "one line per backend: usable or not, and the reason (with a fix where there is\n"
            "one). Verdicts are cached per host; --refresh probes again.\n\n"
            "  byok doctor                 the table (BYOK_GUEST=auto picks the first usable)\n"
            "  BYOK_GUEST=qemu-tcg byok …  force a backend for any command"),
    )
    p.add_argument("--refresh", action="store_true", help="ignore cached verdicts, boot again")
    p.add_argument("--backend", action="append", choices=BACKEND_NAMES, default=None,
                   help="only this backend (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)
    g = sub.add_parser(
        "guest", formatter_class=fmt, help="prepare the guest backends' kernels (cached)",
        description=(
            "byok guest prepare downloads and builds what the backends need, once per host:\n"
            "Debian's kernel + an initramfs for the QEMU backends, Debian unstable's\n"
            "user-mode-linux for uml-newer. Afterwards everything works offline."),
    )
    gs = g.add_subparsers(dest="guest_cmd", metavar="ACTION")
    gs.required = True
    prep = gs.add_parser("prepare", formatter_class=fmt, help="fetch/build every backend's assets")
    prep.add_argument("--backend", action="append", choices=BACKEND_NAMES, default=None,
                      help="only this backend (repeatable); default: all that need assets")
    prep.set_defaults(func=_prepare)


def _doctor(args: argparse.Namespace) -> int:
    from byok.guest import doctor

    doc = doctor.report(refresh=args.refresh, only=args.backend,
                        progress=lambda m: err.print(f"[dim]{m}[/]"))
    if args.json:
        out.print_json(json.dumps(doc))
    else:
        for line in doctor.lines(doc):
            out.print(line, markup=False)
    return 0 if any(b["usable"] for b in doc["backends"]) else GuestError.exit_code


def _prepare(args: argparse.Namespace) -> int:
    from byok.guest import select

    failed = 0
    for name in args.backend or ["uml-newer", "qemu-tcg"]:
        b = select.backend(name)
        try:
            b.prepare(lambda m: err.print(f"[dim]{m}[/]"))
            out.print(f"{name}: ready ({', '.join(f'{k} {v}' for k, v in b.versions().items())})",
                      markup=False)
        except ByokError as e:
            failed += 1
            err.print(f"[red]{name}:[/] {e}")
    return GuestError.exit_code if failed else 0
