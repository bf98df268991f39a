"""What a user does with their own volume keys: store one (generated or read, its size checked),
describe it, let a service user read it (Barbican ACL), revoke that, delete it.

Key material is read or generated here and goes straight to Barbican; nothing returns it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from byok.common.errors import ByokError, UsageError
from byok.common.sensitive import Sensitive
from byok.keys import guard
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef
from byok.keys.resolver import SYMMETRIC_BITS, Resolver


def new_material(*, passphrase: bool, bits: int = 512, file: Path | None = None) -> Sensitive:
    """Key material from ``file`` or freshly generated; a symmetric key must be ``bits`` long.

    :raises UsageError: the file holds the wrong number of bytes for ``bits``.
    """
    if bits not in SYMMETRIC_BITS:
        raise UsageError(f"an AES-XTS volume key is {' or '.join(map(str, SYMMETRIC_BITS))} bits")
    if file is None:
        raw = secrets.token_urlsafe(32).encode() if passphrase else os.urandom(bits // 8)
    else:
        raw = file.read_bytes()
    if not passphrase and len(raw) * 8 != bits:
        raise UsageError(f"{file} holds {len(raw)} bytes; a {bits}-bit key is {bits // 8} bytes",
                         hint="use --bits to match, or --passphrase for text")
    return Sensitive(raw)


def store(identity: Identity, material: Sensitive, *, passphrase: bool, bits: int = 512,
          name: str = "byok-volume-key") -> KeyRef:
    """Store ``material`` in Barbican as ``identity``; the user owns the secret."""
    api = Resolver(identity).api
    if passphrase:
        return api.store(material, secret_type="passphrase", name=name)
    return api.store(material, secret_type="symmetric", name=name, algorithm="aes",
                     bit_length=bits, mode="xts")


def describe(identity: Identity, ref_text: str) -> dict[str, Any]:
    """Type, size, owner, consumers, fingerprint — and whether it can serve as a volume key.
    Barbican never names a secret's project to outsiders; an ACL grantee learns only "not mine".
    """
    r = Resolver(identity)
    ref = r.parse(ref_text)
    desc = r.info(ref, validate=False).describe()
    owned = guard.owned_by_callers_project(ref, identity)
    desc["owned_by_your_project"] = owned
    desc["owner_project"] = (
        f"{identity.auth_args.get('project_name') or identity.project_id()} "
        f"({identity.project_id()})" if owned
        else "another project (Barbican does not say which)")
    try:
        desc["fingerprint"] = r.resolve(ref).payload.fingerprint()
        desc["usable_as_volume_key"] = True
    except ByokError as e:
        desc["usable_as_volume_key"] = False
        desc["problem"] = e.message
    return desc


def set_reader(identity: Identity, ref_text: str, user_id: str, *, allow: bool,
               private: bool = False) -> dict[str, Any]:
    """Add (``allow``) or remove ``user_id`` in the secret's read ACL; ``private`` also turns
    project access off, so only the owner and the ACL's users can read it. Returns the new ACL.
    """
    r = Resolver(identity)
    ref = r.parse(ref_text)
    acl = r.api.acl(ref).get("read", {})
    users = set(acl.get("users", []))
    project_access = bool(acl.get("project-access", True))
    if allow:
        users.add(user_id)
        project_access = project_access and not private
    else:
        users.discard(user_id)
    r.api.set_acl(ref, users=sorted(users), project_access=project_access)
    return {"secret": ref.secret_id, "users": sorted(users), "project_access": project_access}


def delete(identity: Identity, ref_text: str, *, force: bool = False) -> KeyRef:
    """Delete the secret (Barbican refuses while consumers remain, unless ``force``)."""
    r = Resolver(identity)
    ref = r.parse(ref_text)
    r.api.delete(ref, force=force)
    return ref
