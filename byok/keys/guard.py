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
   volume, proving step 1 happened for it. Anything else is refused with KeyAccessDenied.

Consumers also make Barbican (microversion >= 1.2) refuse to delete K while volumes use it,
unless the owner forces it — the owner stays in control, but not by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from byok.common.errors import KeyAccessDenied, KeyNotFound
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
    """Step 2: the service resolves ``ref`` alone, only for a volume bound in step 1."""
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
