"""``byok recover IMAGE``: offline recovery with only the user's key (no cloud, no root)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byok.cli.common import err, out
from byok.common.errors import WrongKey


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
            "is sparse.\n\n"
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
        summary = recovery.recover_with_key(
            args.image, None if args.check else args.out, key_file=args.key_file,
            passphrase_file=args.passphrase_file, header=args.header, overwrite=args.force,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        out.print_json(json.dumps(summary))
    else:
        where = "checked (nothing written)" if args.check else f"to {args.out}"
        out.print(f"recovered {summary['plaintext_bytes']} bytes {where} "
                  f"(LUKS{summary['luks_version']}, keyslot {summary['slot']}, "
                  f"{summary['seconds']} s, {summary['backend']})")
    return 0
