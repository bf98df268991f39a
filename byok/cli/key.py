"""``byok key store|show|grant|revoke|delete``: the user's own volume keys in Barbican."""

from __future__ import annotations

import argparse
from pathlib import Path

from byok.cli.common import add_identity_args, identity_from_args, out, print_doc
from byok.keys import manage


def register(sub, fmt) -> None:
    kp = sub.add_parser(
        "key", formatter_class=fmt, help="store, inspect, grant and revoke user keys in Barbican",
        description=(
            "Manage the user's own volume keys in Barbican. Key material is read from a file or\n"
            "generated, sent to Barbican, and never printed: 'show' prints a fingerprint.\n\n"
            "Examples:\n"
            "  byok key store --as alice --generate --bits 512\n"
            "  byok key grant REF --to cinder --as alice --private\n"
            "  byok key show REF --as alice"
        ),
    )
    ks = kp.add_subparsers(dest="action", metavar="ACTION")
    ks.required = True
    st = ks.add_parser("store", formatter_class=fmt, help="store a key, print its ref")
    add_identity_args(st)
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="raw key bytes (or passphrase text) from a file")
    src.add_argument("--generate", action="store_true", help="generate random key material")
    st.add_argument("--passphrase", action="store_true",
                    help="store a passphrase secret instead of a symmetric AES key")
    st.add_argument("--bits", type=int, choices=(256, 512), default=512,
                    help="AES key size (512 = AES-256-XTS, the default)")
    st.add_argument("--name", default="byok-volume-key", help="secret name in Barbican")
    st.set_defaults(func=_store)
    sh = ks.add_parser("show", formatter_class=fmt,
                       help="type, size, owner, consumers, fingerprint")
    sh.add_argument("ref", metavar="REF", help="secret href or UUID")
    add_identity_args(sh)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_show)
    for name, helptext in (("grant", "let a service user read this key (Barbican ACL)"),
                           ("revoke", "remove a user from the key's ACL")):
        gp = ks.add_parser(name, formatter_class=fmt, help=helptext)
        gp.add_argument("ref", metavar="REF", help="secret href or UUID")
        gp.add_argument("--to" if name == "grant" else "--from", dest="target", required=True,
                        metavar="USER", help="user name (embedded stack) or Keystone user id")
        add_identity_args(gp)
        if name == "grant":
            gp.add_argument("--private", action="store_true",
                            help="also turn project access off (only you + ACL users)")
        gp.set_defaults(func=_acl, allow=name == "grant")
    dl = ks.add_parser("delete", formatter_class=fmt, help="delete the key (refused while in use)")
    dl.add_argument("ref", metavar="REF")
    add_identity_args(dl)
    dl.add_argument("--force", action="store_true", help="delete even if volumes consume it")
    dl.set_defaults(func=_delete)


def _store(args: argparse.Namespace) -> int:
    material = manage.new_material(passphrase=args.passphrase, bits=args.bits, file=args.file)
    ref = manage.store(identity_from_args(args), material, passphrase=args.passphrase,
                       bits=args.bits, name=args.name)
    out.print(ref.href)
    return 0


def _show(args: argparse.Namespace) -> int:
    print_doc(manage.describe(identity_from_args(args), args.ref), as_json=args.json, width=22)
    return 0


def _acl(args: argparse.Namespace) -> int:
    from byok.stack.manager import Stack

    user_id = Stack.at(getattr(args, "state_dir", None)).user_id(args.target)
    acl = manage.set_reader(identity_from_args(args), args.ref, user_id, allow=args.allow,
                            private=getattr(args, "private", False))
    out.print(f"{'grant' if args.allow else 'revoke'}: read ACL of {acl['secret']} is now "
              f"users={acl['users']} project-access={acl['project_access']}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    ref = manage.delete(identity_from_args(args), args.ref, force=args.force)
    out.print(f"deleted {ref.secret_id}")
    return 0
