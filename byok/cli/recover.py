"""``byok recover IMAGE``: offline recovery with only the user's key (no cloud, no root)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byok.cli.common import err, out
from byok.common.errors import RecoveryRefused, WrongKey


def register(sub, fmt) -> None:
    rp = sub.add_parser(
        "recover", formatter_class=fmt,
        help="offline: a LUKS volume/backup/image file -> plaintext, with only your key",
        description=(
            "Decrypt a LUKS1/LUKS2 volume, backup or image offline: no Keystone, no Barbican,\n"
            "no root, no device-mapper, no cryptsetup. Give the key exactly as stored in\n"
            "Barbican: --key-file with the raw key bytes of a symmetric secret (the passphrase\n"
            "is derived as os-brick does), or --passphrase-file with a passphrase secret.\n"
            f"A wrong key exits with status {WrongKey.exit_code} and writes nothing. The output "
            "is sparse.\n"
            "A LUKS2 volume caught in the middle of 'cryptsetup reencrypt' is read as\n"
            "cryptsetup's own repair would (each segment with its own key, the hotzone from\n"
            "its checksums, journal or moved copy), each keyslot only for the segments its\n"
            "digest is bound to. Bytes that cannot be vouched for (resilience 'none'\n"
            f"interrupted, a hotzone block nothing explains) are refused: exit "
            f"{RecoveryRefused.exit_code}, nothing\n"
            "written, the byte ranges and why on stderr (--json: on stdout).\n\n"
            "Example:\n"
            "  byok recover vol.img --key-file my-key.bin --out vol.plain"
        ),
    )
    rp.add_argument("image", type=Path, help="volume, backup or image file")
    g = rp.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-file", type=Path, help="raw key bytes (symmetric secret)")
    g.add_argument("--passphrase-file", type=Path, help="passphrase secret text")
    rp.add_argument("--header", type=Path, help="detached LUKS header file")
    dest = rp.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="plaintext output file")
    dest.add_argument("--check", action="store_true",
                      help="decrypt everything, write nothing: does this key open it?")
    rp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=_recover)


def _recover(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from byok.luks import recovery

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("decrypting", total=None)
        try:
            summary = recovery.recover_with_key(
                args.image, None if args.check else args.out, key_file=args.key_file,
                passphrase_file=args.passphrase_file, header=args.header, overwrite=args.force,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
        except RecoveryRefused as e:
            _print_refusal(e, as_json=args.json)
            raise
    if args.json:
        out.print_json(json.dumps(summary))
        return 0
    keys = ", ".join(f"digest {d} from keyslot {k['keyslot']}"
                     for d, k in summary["keys"].items()) or "no key needed"
    state = summary["reencryption"]
    how = "" if state["status"] == "none" else (
        f"; interrupted {state['mode']} ({state['resilience']}), state {state['status']}")
    where = "checked (nothing written)" if args.check else f"to {args.out}"
    out.print(f"recovered {summary['plaintext_bytes']} bytes {where} "
              f"(LUKS{summary['luks_version']}, {keys}{how}, {summary['seconds']} s, "
              f"{summary['backend']})")
    return 0


def _print_refusal(e: RecoveryRefused, *, as_json: bool) -> None:
    """Which byte ranges could not be vouched for, and why."""
    if as_json:
        out.print_json(json.dumps({
            "refused": [{"start": a, "end": b, "bytes": b - a, "why": why}
                        for a, b, why in e.ranges], "reencryption": e.state}))
        return
    for a, b, why in e.ranges[:20]:
        err.print(f"refused: bytes {a}-{b - 1} ({b - a} bytes): {why}")
