"""``byok volume ...``: the prototype Cinder side (volumes, copies, rotation, headers)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from byok.cli.common import add_identity_args, err, identity_from_args, out, size
from byok.common.errors import UsageError


def register(sub, fmt) -> None:
    from byok.luks.cryptsetup import POLICIES

    vp = sub.add_parser(
        "volume", formatter_class=fmt,
        help="the prototype Cinder side: volumes, clones, backups, images, rotation",
        description=(
            "File-backed volumes whose key is the user's. Copies share the key reference\n"
            "(a Barbican consumer each), delete never deletes the key, rotation is journaled\n"
            "and crash-safe. Pool: .byok/pool (or --pool / $BYOK_POOL_DIR).\n\n"
            "Examples:\n"
            "  byok volume create --size 64M --key-ref REF --as alice\n"
            "  byok volume clone VOL --as alice                 # shares the key\n"
            "  byok volume clone VOL --key-ref OTHER --as alice # rekeyed clone\n"
            "  byok volume rotate VOL --key-ref NEW --as alice\n"
            "  byok volume backup VOL --as alice"
        ),
    )
    vp.add_argument("--pool", type=Path, default=None, help="pool directory")
    vs = vp.add_subparsers(dest="action", metavar="ACTION")
    vs.required = True

    def cmd(name: str, helptext: str, func, *, target: str | None = "VOL", json_flag=True):
        p = vs.add_parser(name, formatter_class=fmt, help=helptext)
        if target:
            p.add_argument("target", metavar=target)
        add_identity_args(p)
        p.add_argument("--service-cloud", help="cloud of the service identity (with --cloud)")
        if json_flag:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    c = cmd("create", "a volume encrypted with the user's key", _create, target=None)
    c.add_argument("--size", required=True, type=size, help="e.g. 64M, 1G")
    c.add_argument("--key-ref", required=True)
    c.add_argument("--name", default="")
    c.add_argument("--provider", choices=("luks", "luks2"), default="luks2")
    c.add_argument("--escrow", action="store_true",
                   help="add a keyslot for a deployment escrow key (either party can recover)")
    c.add_argument("--no-format", action="store_true",
                   help="leave it blank; the attach hook formats it on first attach")
    c.add_argument("--pbkdf", choices=tuple(POLICIES),
                   help="PBKDF policy (default: by the secret's type)")
    c = cmd("clone", "a new volume from VOL (same key, or --key-ref to rekey)", _copy)
    c.add_argument("--key-ref")
    c.set_defaults(copy="clone")
    for name, helptext in (("snapshot", "a snapshot of VOL (shares the key)"),
                           ("backup", "a backup of VOL: ciphertext + header of now"),
                           ("upload", "upload VOL as a LUKS image (shares the key)")):
        cmd(name, helptext, _copy).set_defaults(copy=name)
    c = cmd("restore", "a new volume from BACKUP", _copy, target="BACKUP")
    c.add_argument("--key-ref", help="a key that opens the backup (if rotated since)")
    c.set_defaults(copy="restore")
    c = cmd("from-image", "a new volume from IMAGE", _copy, target="IMAGE")
    c.add_argument("--key-ref")
    c.set_defaults(copy="from-image")
    c = cmd("image-from-raw", "a LUKS image from a plaintext file (no root, no dm)",
            _image_from_raw, target="RAW")
    c.add_argument("--key-ref", required=True)
    cmd("delete", "delete a volume/snapshot/backup/image (never the key)", _delete,
        json_flag=False)
    cmd("add-escrow", "give VOL an escrow keyslot (a deployment key, service project)",
        _add_escrow)
    cmd("repair", "settle what a killed byok left half done (every mutating command does "
        "this first)", _repair, target=None, json_flag=False)
    c = cmd("rotate", "move VOL to another user key (journaled, crash-safe)", _rotate)
    c.add_argument("--key-ref", help="the new key (not needed with --resume)")
    c.add_argument("--resume", action="store_true", help="only finish an interrupted rotation")
    c = cmd("reencrypt", "new volume key for all data, then the new user key (LUKS2)",
            _reencrypt)
    c.add_argument("--key-ref", help="the new key (not needed with --resume)")
    c.add_argument("--resume", action="store_true",
                   help="only finish an interrupted re-encryption")
    cmd("header-backup", "save VOL's LUKS header", _header, json_flag=False).set_defaults(
        header="backup")
    c = cmd("header-restore", "write a saved header back onto VOL", _header, json_flag=False)
    c.add_argument("--from", dest="from_file", type=Path,
                   help="backup file (default: the newest one that opens with the current key)")
    c.set_defaults(header="restore")
    ls = vs.add_parser("list", formatter_class=fmt, help="everything in the pool")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _service(args: argparse.Namespace, *, with_service: bool = True):
    """The prototype volume service for the chosen user (service identity: cinder)."""
    from byok.keys.identity import Identity
    from byok.lifecycle.volumes import Pool, VolumeService

    service = None
    if with_service:
        if getattr(args, "service_cloud", None):
            service = Identity.from_cloud(args.service_cloud)
        elif not getattr(args, "cloud", None):
            from byok.stack.manager import Stack

            service = Stack.at(getattr(args, "state_dir", None)).identity("cinder")
    return VolumeService(Pool(args.pool), identity_from_args(args), service=service)


def _print(rec, as_json: bool = False) -> int:
    doc = asdict(rec)
    if as_json:
        out.print_json(json.dumps(doc))
        return 0
    for k in ("id", "kind", "name", "size", "state", "key_ref", "secret_type", "key_owner",
              "luks_type", "escrow_ref", "source"):
        out.print(f"[bold]{k:>12}[/]  {doc[k]}")
    return 0


def _create(args: argparse.Namespace) -> int:
    svc = _service(args, with_service=args.escrow)
    return _print(svc.create(args.size, args.key_ref, name=args.name, provider=args.provider,
                             escrow=args.escrow, format=not args.no_format, policy=args.pbkdf),
                  args.json)


def _copy(args: argparse.Namespace) -> int:
    svc = _service(args, with_service=False)
    key_ref = getattr(args, "key_ref", None)
    op = {
        "clone": lambda: svc.clone(args.target, key_ref=key_ref),
        "snapshot": lambda: svc.snapshot(args.target),
        "backup": lambda: svc.backup(args.target),
        "upload": lambda: svc.upload_image(args.target),
        "restore": lambda: svc.restore(args.target, key_ref=key_ref),
        "from-image": lambda: svc.create_from_image(args.target, key_ref=key_ref),
    }[args.copy]
    return _print(op(), args.json)


def _image_from_raw(args: argparse.Namespace) -> int:
    svc = _service(args, with_service=False)
    return _print(svc.image_from_raw(Path(args.target), args.key_ref), args.json)


def _delete(args: argparse.Namespace) -> int:
    _service(args).delete(args.target)
    out.print(f"deleted {args.target} (the key stays in Barbican)")
    return 0


def _add_escrow(args: argparse.Namespace) -> int:
    return _print(_service(args).add_escrow(args.target), args.json)


def _repair(args: argparse.Namespace) -> int:
    done = _service(args).resume_interrupted(strict=True)
    for line in done:
        out.print(line)
    if not done:
        out.print("nothing was left half done")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from byok.lifecycle import rotation

    if not args.resume and not args.key_ref:
        raise UsageError("give --key-ref NEW (or --resume to finish an interrupted rotation)")
    svc = _service(args, with_service=False)
    return _print(rotation.rotate(svc, args.target, args.key_ref or "", resume_only=args.resume),
                  args.json)


def _reencrypt(args: argparse.Namespace) -> int:
    from byok.lifecycle import rotation

    if not args.resume and not args.key_ref:
        raise UsageError("give --key-ref NEW (or --resume to finish an interrupted one)")
    svc = _service(args)  # the service identity drops a now useless escrow secret
    rec, seconds = rotation.reencrypt(svc, args.target, args.key_ref, resume_only=args.resume)
    err.print(f"re-encrypted all data in {seconds:.2f} s")
    return _print(rec, args.json)


def _header(args: argparse.Namespace) -> int:
    svc = _service(args, with_service=False)
    if args.header == "backup":
        out.print(str(svc.header_backup(args.target)))
    else:
        out.print(f"restored {svc.header_restore(args.target, args.from_file)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from byok.lifecycle.volumes import Pool

    recs = Pool(args.pool).list()
    if args.json:
        out.print_json(json.dumps([asdict(r) for r in recs]))
        return 0
    from rich.table import Table

    t = Table()
    for col in ("id", "kind", "size", "state", "key", "source"):
        t.add_column(col)
    for r in recs:
        t.add_row(r.id, r.kind, str(r.size), r.state, r.key_ref.rsplit("/", 1)[-1][:8] + "…",
                  f"{r.source.get('kind', '')} {r.source.get('id', '')[:8]}")
    out.print(t)
    return 0
