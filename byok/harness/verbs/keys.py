"""Key-service verbs: keys stored as a user, a user's Barbican view, resolve and delete, the
guard's two steps, and castellan's key managers (stock ``barbican`` and ``byok``) configured
for this environment."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from byok.common.sensitive import Sensitive
from byok.harness.verbs.base import VerbBase
from byok.keys import guard
from byok.keys import resolver as keys
from byok.keys.barbican import BarbicanAPI
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef
from byok.keys.ref import parse as parse_ref


class KeyVerbs(VerbBase):
    def user_key(self, user: str = "alice", kind: str = "aes512", *, keep: bool = False,
                 **overrides: Any) -> tuple[KeyRef, bytes]:
        """A new secret stored in Barbican *as the user* (removed after the experiment):
        ``aes256``/``aes512`` symmetric, or ``passphrase``. Returns (ref, raw bytes)."""
        api = self.barbican(user)
        if kind == "passphrase":
            raw = overrides.pop("payload", os.urandom(16).hex().encode())
            ref = api.store(Sensitive(raw), secret_type="passphrase",
                            name=f"{self.exp.id}-passphrase", **overrides)
        else:
            bits = int(kind[3:])
            raw = overrides.pop("payload", os.urandom(bits // 8))
            args: dict[str, Any] = {"algorithm": "aes", "bit_length": bits, "mode": "xts",
                                    "secret_type": "symmetric"} | overrides
            ref = api.store(Sensitive(raw), name=f"{self.exp.id}-{kind}", **args)
        if not keep:
            def remove() -> None:
                with contextlib.suppress(Exception):
                    api.delete(ref, force=True)
            self.on_cleanup(remove)
        return ref, raw

    def barbican(self, user: str = "alice") -> BarbicanAPI:
        """``user``'s view of Barbican: secrets, consumers, ACLs, counts, delete."""
        return BarbicanAPI(self.user(user), self.env.barbican_url)

    def delete_key(self, ref: KeyRef | str, *, user: str = "alice", force: bool = False) -> None:
        """``user`` deletes the secret; ``force`` deletes it even while it has consumers."""
        self.barbican(user).delete(ref if isinstance(ref, KeyRef) else parse_ref(ref),
                                   force=force)

    def resolver(self, user: str = "alice", *, identity: Identity | None = None,
                 endpoint: str | None = None, deadline: float | None = None) -> keys.Resolver:
        """byok's resolver for ``user`` (or ``identity``): one session for all its calls."""
        kw = {} if deadline is None else {"deadline": deadline}
        return keys.Resolver(identity or self.user(user),
                             endpoint=endpoint or self.env.barbican_url, **kw)

    def resolve(self, ref: KeyRef | str, *, user: str = "alice") -> keys.KeyMaterial:
        """Metadata + payload of ``ref`` as ``user`` reads it (typed errors)."""
        return self.resolver(user).resolve(ref)

    def passphrase(self, key: keys.KeyMaterial) -> Sensitive:
        """The LUKS passphrase byok derives from a key (os-brick's rule)."""
        return keys.passphrase(key)

    def osbrick_passphrase(self, key: keys.KeyMaterial) -> str:
        """What os-brick itself derives from the key's castellan object."""
        from os_brick import utils as osbrick_utils

        return osbrick_utils.get_passphrase_from_secret(key.castellan_object())

    def sensitive(self, data: bytes | str) -> Sensitive:
        """Wrap material that must not reach a log or an argv."""
        return Sensitive(data)

    # -- the guard ------------------------------------------------------------------------------
    def bind_key(self, ref: KeyRef | str, volume_id: str, *, user: str = "alice"
                 ) -> keys.SecretInfo:
        """Step 1 with ``user``'s token: may they use ``ref``? Record ``volume_id`` as consumer."""
        return guard.bind(ref, user=self.user(user), volume_id=volume_id,
                          endpoint=self.env.barbican_url)

    def resolve_for_volume(self, ref: KeyRef | str, volume_id: str, *, as_user: str = "cinder",
                           service: str = guard.DEFAULT_SERVICE) -> keys.KeyMaterial:
        """Step 2, token-less: ``as_user`` (a service user) resolves ``ref`` for ``volume_id``
        on its own authority (needs the owner's ACL and a consumer of ``service`` for it)."""
        return guard.resolve_for_volume(ref, service_identity=self.user(as_user),
                                        volume_id=volume_id, service=service,
                                        endpoint=self.env.barbican_url)

    def resolve_recorded(self, ref: KeyRef | str, volume_id: str,
                         binding: guard.Binding | None, *, as_user: str = "cinder"
                         ) -> keys.KeyMaterial:
        """Step 2 as Cinder's patch does it: the service's own record (``binding``) must name
        ``ref`` for ``volume_id`` before any payload is read; the consumer stays necessary."""
        return guard.resolve_recorded(ref, service_identity=self.user(as_user),
                                      volume_id=volume_id, binding=binding,
                                      endpoint=self.env.barbican_url)

    def volume_binding(self, svc: Any, volume_id: str) -> guard.Binding | None:
        """The volume service's row for ``volume_id`` as a guard Binding (Cinder's
        ``encryption_key_id`` + ``encryption_key_owner`` in miniature); None: no such row."""
        from byok.common.errors import VolumeNotFound
        from byok.keys import ref as keyref

        try:
            rec = svc.pool.load(volume_id)
        except VolumeNotFound:
            return None
        key_id = keyref.parse(rec.key_ref, allowed_endpoints=[self.env.barbican_url]).secret_id
        return guard.Binding(rec.id, key_id, owner=rec.key_owner, resource_type=rec.kind)

    def may_delete(self, ref: KeyRef | str, binding: guard.Binding | None) -> bool:
        """Would the service delete ``ref`` with its volume? Decided from its record only."""
        return guard.may_delete(ref, binding)

    def barbican_status(self, user: str, method: str, path: str,
                        body: dict[str, Any] | None = None) -> int:
        """The HTTP status Barbican answers ``user`` for ``method path`` (``path`` below the
        endpoint, e.g. ``/v1/secrets/<id>/consumers``), sent as a client sends it: for
        measuring what the policy admits, not for using the answer."""
        from byok.keys.barbican import MICROVERSION

        url = self.env.barbican_url.rstrip("/") + path
        headers = {"OpenStack-API-Version": f"key-manager {MICROVERSION}"}
        r = self.user(user).session.request(url, method, json=body, headers=headers,
                                            raise_exc=False)
        return r.status_code

    def owner_mark(self, owner: str = "service") -> dict[str, Any]:
        """The metadata body of byok's ownership mark (what a forger would PUT)."""
        from byok.key_manager.byok_key_manager import OWNER_KEY, OWNER_SERVICE

        return {"metadata": {OWNER_KEY: OWNER_SERVICE if owner == "service" else owner}}

    def backend_says_user_owned(self, ref: KeyRef | str, user: str = "alice") -> bool:
        """Does castellan's ``byok`` backend (mark-based) take ``ref`` for a user-owned key?"""
        km = self.key_manager("byok")
        secret_id = ref.secret_id if isinstance(ref, KeyRef) else str(ref)
        return km.is_user_owned(self.user(user).castellan_context(), secret_id)

    def owns_key(self, ref: KeyRef | str, user: str) -> bool:
        """Does ``ref`` belong to ``user``'s project (the guard's ACL-read ownership probe)?"""
        return guard.owned_by_callers_project(ref, self.user(user))

    # -- castellan ------------------------------------------------------------------------------
    def key_manager(self, backend: str = "byok") -> Any:
        """castellan's key manager API with ``backend`` (``barbican`` = stock, ``byok``),
        configured against this environment's Keystone as Cinder would be."""
        from castellan import key_manager

        from byok.key_manager.byok_key_manager import configure

        return key_manager.API(configure(auth_url=self.env.keystone_url, backend=backend))

    def volume_scope(self, volume_id: str) -> contextlib.AbstractContextManager[None]:
        """Tell the byok backend which volume the enclosed castellan calls are for."""
        from byok.key_manager.byok_key_manager import volume_scope

        return volume_scope(volume_id)

    def fresh_user(self, name: str) -> Identity:
        """A new identity for ``name`` (nothing cached: the next call logs in again)."""
        return self.env.identity_factory(name)


