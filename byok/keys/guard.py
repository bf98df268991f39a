"""The confused-deputy guard: when may a service use a user's key for a project's volume?

Barbican answers "may identity X read secret K". A service such as Cinder needs a different
answer: "may I use K *for this volume of project P*". A service's own read access (an ACL the
owner granted it) is not enough — otherwise any user of any project could name someone else's
key and have the service apply it. The rule implemented here:

1. **Binding** (volume create / first attach, a user of P present): the user's own P-scoped token
   must be able to read K. Barbican's policy then decides: K belongs to P (and is not private to
   another member), or K's owner granted this user an ACL. On success a Barbican *consumer*
   ``(service, "volume", <volume id>)`` is registered on K, with the user's token.
2. **Token-less use** (restart, evacuate, migration: the service acts alone): the service must be
   able to read K (the owner granted it an ACL) *and* K must carry the consumer for exactly this
   volume. Anything else is refused with KeyAccessDenied.

Consumers also make Barbican (microversion >= 1.2) refuse to delete K while volumes use it,
unless the owner forces it — the owner stays in control, but not by accident.

A consumer is **advisory**, not proof of step 1: Barbican lets any ACL reader (the service
itself) and any project member of a non-private secret post one, and project members rewrite a
secret's metadata (ownership marks) — E17 measures both. The authority is the service's own
record (Cinder: ``volumes.encryption_key_id`` + ``encryption_key_owner``, written only after
step 1 checked the user's token): :func:`resolve_recorded` refuses a volume whose record does
not name the key, whatever the consumers say, and :func:`may_delete` decides deletion from the
record alone, never from a mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from byok.common.errors import KeyAccessDenied, KeyNotFound
from byok.keys import ref as keyref
from byok.keys.barbican import DEFAULT_DEADLINE
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef
from byok.keys.resolver import KeyMaterial, Resolver, SecretInfo, content_type_for, validate_payload

RESOURCE_TYPE = "volume"
DEFAULT_SERVICE = "cinder"


@dataclass(frozen=True)
class Consumer:
    service: str
    resource_id: str
    resource_type: str = RESOURCE_TYPE

    def matches(self, c: dict[str, Any]) -> bool:
        return (
            c.get("service") == self.service
            and c.get("resource_type") == self.resource_type
            and c.get("resource_id") == self.resource_id
        )

    def args(self) -> tuple[str, str, str]:
        return self.service, self.resource_type, self.resource_id


OWNER_USER = "user"
OWNER_SERVICE = "service"


@dataclass(frozen=True)
class Binding:
    """The service's own record of which key a resource uses and who owns it — Cinder's
    ``encryption_key_id`` and ``encryption_key_owner`` columns. Authoritative: only the service
    writes it, after checking the user's token (step 1)."""

    resource_id: str
    key_id: str
    owner: str = OWNER_USER
    resource_type: str = RESOURCE_TYPE


def _secret_id(ref: KeyRef | str) -> str:
    """The secret id of a KeyRef or a bare UUID (an href string needs its endpoint checked:
    pass a KeyRef from the resolver)."""
    return ref.secret_id if isinstance(ref, KeyRef) else keyref.parse(ref).secret_id


def check_binding(ref: KeyRef | str, binding: Binding | None, *, volume_id: str,
                  resource_type: str = RESOURCE_TYPE) -> None:
    """Raise KeyAccessDenied unless the service's record binds this resource to this key.

    ``None`` means the service has no record of the resource at all — refused like a mismatch.
    """
    key_id = _secret_id(ref)
    if binding is None or (binding.resource_type, binding.resource_id) != (
            resource_type, volume_id):
        raise KeyAccessDenied(
            f"the service has no record binding {resource_type} {volume_id} to key {key_id}; "
            "a consumer on the secret is not proof (any ACL reader may post one)",
            hint="create the volume with the user's token (that writes the record)",
        )
    if binding.key_id != key_id:
        raise KeyAccessDenied(
            f"{resource_type} {volume_id} is recorded with key {binding.key_id}, not {key_id}",
            hint="the key of a volume comes from the service's record, not from a request",
        )


def may_delete(ref: KeyRef | str, binding: Binding | None) -> bool:
    """True only if the service's record says the key is the service's own (today's Cinder
    keys). A Barbican ownership mark is never consulted: project members can rewrite it."""
    return (binding is not None and binding.owner == OWNER_SERVICE
            and binding.key_id == _secret_id(ref))


def _bind(resolver: Resolver, ref: KeyRef | str, consumer: Consumer) -> SecretInfo:
    info = resolver.info(ref)  # the user's token: KeyAccessDenied / KeyNotFound from Barbican
    if not any(consumer.matches(c) for c in info.consumers):
        resolver.api.add_consumer(info.ref, *consumer.args())
    return info


def _material(resolver: Resolver, info: SecretInfo) -> KeyMaterial:
    """The payload of an already checked secret, validated against its metadata."""
    payload = resolver.api.payload(info.ref, content_type_for(info.secret_type))
    validate_payload(info, payload)
    return KeyMaterial(info, payload)


def bind(
    ref: KeyRef | str,
    *,
    user: Identity,
    volume_id: str,
    service: str = DEFAULT_SERVICE,
    endpoint: str | None = None,
    resource_type: str = RESOURCE_TYPE,
    deadline: float = DEFAULT_DEADLINE,
) -> SecretInfo:
    """Step 1: check the user may use ``ref`` and record the resource as its consumer."""
    resolver = Resolver(user, endpoint=endpoint, deadline=deadline)
    return _bind(resolver, ref, Consumer(service, volume_id, resource_type))


def resolve_volume_key(
    ref: KeyRef | str,
    *,
    identity: Identity,
    volume_id: str,
    service: str = DEFAULT_SERVICE,
    endpoint: str | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> KeyMaterial:
    """The key for ``volume_id`` as ``identity`` may use it — the one entry point of the attach
    hook and of the castellan backend's ``get`` for a volume.

    A user (no ``service`` role) binds: Barbican checks the user's own token, and the volume is
    recorded as a consumer (once). A service user acts on its own authority and gets the key
    only through step 2 (ACL *and* a consumer for exactly this volume).
    """
    if identity.is_service():
        return resolve_for_volume(ref, service_identity=identity, volume_id=volume_id,
                                  service=service, endpoint=endpoint, deadline=deadline)
    resolver = Resolver(identity, endpoint=endpoint, deadline=deadline)
    return _material(resolver, _bind(resolver, ref, Consumer(service, volume_id)))


def resolve_for_volume(
    ref: KeyRef | str,
    *,
    service_identity: Identity,
    volume_id: str,
    service: str = DEFAULT_SERVICE,
    endpoint: str | None = None,
    resource_type: str = RESOURCE_TYPE,
    deadline: float = DEFAULT_DEADLINE,
) -> KeyMaterial:
    """Step 2: the service resolves ``ref`` alone, only for a volume bound in step 1.

    The consumer is the only proof here, and the service itself can post it (E17): callers
    that keep a record of their volumes use :func:`resolve_recorded`.
    """
    resolver = Resolver(service_identity, endpoint=endpoint, deadline=deadline)
    try:
        info = resolver.info(ref)
    except KeyAccessDenied as e:
        raise KeyAccessDenied(
            f"{service_identity.name} cannot read key {getattr(ref, 'secret_id', ref)}: "
            "its owner has not granted the service an ACL",
            hint="the owner runs: byok key grant REF --to " + service,
        ) from e
    if not any(Consumer(service, volume_id, resource_type).matches(c) for c in info.consumers):
        raise KeyAccessDenied(
            f"key {info.ref.secret_id} was never bound to volume {volume_id} by a user of its "
            f"project; {service} may not use it for that volume on its own authority",
            hint="bind it with the user's token first (volume create / attach as the user)",
        )
    return _material(resolver, info)


def resolve_recorded(
    ref: KeyRef | str,
    *,
    service_identity: Identity,
    volume_id: str,
    binding: Binding | None,
    service: str = DEFAULT_SERVICE,
    endpoint: str | None = None,
    resource_type: str = RESOURCE_TYPE,
    deadline: float = DEFAULT_DEADLINE,
) -> KeyMaterial:
    """Step 2 for a service that keeps its own record of the volume (Cinder's row): the record
    must bind this volume to this key — checked first, so a forged consumer never gets the
    key read — and then step 2 as above (the owner's ACL; the consumer still present, as the
    Cinder and Nova patches check it: necessary, not sufficient)."""
    checked = Resolver(service_identity, endpoint=endpoint, deadline=deadline)._ref(ref)
    check_binding(checked, binding, volume_id=volume_id, resource_type=resource_type)
    return resolve_for_volume(checked, service_identity=service_identity, volume_id=volume_id,
                              service=service, endpoint=endpoint, resource_type=resource_type,
                              deadline=deadline)


def release(
    ref: KeyRef | str,
    *,
    identity: Identity,
    volume_id: str,
    service: str = DEFAULT_SERVICE,
    endpoint: str | None = None,
    resource_type: str = RESOURCE_TYPE,
    deadline: float = DEFAULT_DEADLINE,
) -> bool:
    """Remove this resource's consumer from the key (never the key). False if nothing to remove."""
    resolver = Resolver(identity, endpoint=endpoint, deadline=deadline)
    r = resolver._ref(ref)
    try:
        resolver.api.remove_consumer(r, service, resource_type, volume_id)
    except KeyNotFound:
        return False
    return True


def owned_by_callers_project(ref: KeyRef | str, identity: Identity) -> bool:
    """True if the secret belongs to ``identity``'s project.

    Barbican lets only members of the secret's own project read its ACL (``secret_acls:get``);
    an ACL grantee from elsewhere gets 403. That makes the ACL read an ownership probe.
    """
    resolver = Resolver(identity)
    try:
        resolver.api.acl(resolver._ref(ref))
    except KeyAccessDenied:
        return False
    return True
