"""castellan backend ``byok``: castellan's Barbican backend, made safe for user-owned keys.

Nova and Cinder load it by name (``[key_manager] backend = byok``). It overrides only what it
must: sessions are reused per credential; secrets it creates carry a service-owner mark (no mark
means the user's); ``delete`` never deletes a user's key, it drops the volume's consumer;
``get`` inside :func:`volume_scope` goes through byok's guarded key path; ``store`` of a user
key's own material returns its id (shared, not copied). Why each, and castellan's exception
contract kept: design/notes/key-path.md ("The castellan backend").
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import cachetools
from castellan.common import exception as cexc
from castellan.key_manager import barbican_key_manager
from oslo_config import cfg

from byok.common.sensitive import quiet_http_logs

LOG = logging.getLogger(__name__)

OWNER_KEY = "byok-owner"
OWNER_SERVICE = "service"

_byok_opts = [
    cfg.StrOpt("consumer_service", default="cinder",
               help="Service name recorded in Barbican consumers (cinder or nova)."),
    cfg.IntOpt("session_ttl", default=300, min=0,
               help="Seconds a per-credential Barbican client/session is reused (0 disables)."),
    cfg.IntOpt("session_cache_size", default=128, min=1,
               help="How many credentials' sessions are kept."),
]
BYOK_GROUP = "byok"

_volume: contextvars.ContextVar[str | None] = contextvars.ContextVar("byok_volume", default=None)


@contextlib.contextmanager
def volume_scope(volume_id: str | None) -> Iterator[None]:
    """Tell the backend which volume the enclosed calls are for (consumer bookkeeping)."""
    token = _volume.set(volume_id)
    try:
        yield
    finally:
        _volume.reset(token)


def current_volume() -> str | None:
    return _volume.get()


def configure(
    conf: cfg.ConfigOpts | None = None,
    *,
    auth_url: str,
    barbican_endpoint: str | None = None,
    backend: str = "byok",
) -> cfg.ConfigOpts:
    """A castellan configuration for ``backend`` against the given Keystone (and Barbican)."""
    from castellan import options

    if conf is None:
        conf = cfg.ConfigOpts()
        conf([])
    options.set_defaults(conf, backend=backend, auth_endpoint=auth_url,
                         barbican_endpoint=barbican_endpoint)
    return conf


class ByokKeyManager(barbican_key_manager.BarbicanKeyManager):
    """Barbican backend that never copies or deletes a user's key, with session reuse."""

    def __init__(self, configuration: cfg.ConfigOpts) -> None:
        super().__init__(configuration)
        self.conf.register_opts(_byok_opts, group=BYOK_GROUP)
        self._lock = threading.Lock()
        self._caches: dict[str, cachetools.TTLCache[bytes, Any]] = {}
        self._hmac_key = os.urandom(32)  # per process: cache keys mean nothing elsewhere
        self._fetched_digests: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(maxsize=1024)

    # -- session reuse -----------------------------------------------------------------------
    def _credential_key(self, context: Any) -> bytes | None:
        from castellan.common.credentials import keystone_password, keystone_token
        from oslo_context import context as oslo_context

        if isinstance(context, keystone_password.KeystonePassword):
            secret = context.password or ""
            parts: tuple[str | None, ...] = (
                "pw", context.auth_url, context.username, context.user_id,
                context.user_domain_id, context.user_domain_name, context.project_id,
                context.project_name, context.project_domain_id, context.project_domain_name,
                context.domain_id, context.domain_name, context.trust_id,
            )
        elif isinstance(context, keystone_token.KeystoneToken):
            secret = context.token or ""
            parts = (
                "tok", context.auth_url, context.project_id, context.project_name,
                context.project_domain_id, context.project_domain_name, context.trust_id,
            )
        elif isinstance(context, oslo_context.RequestContext) and not hasattr(
            context, "get_auth_plugin"
        ):
            secret = context.auth_token or ""
            parts = ("ctx", context.project_id, context.project_name, context.domain_id)
        else:
            return None  # unknown credential shape: do not cache
        msg = "\x1f".join(str(p) for p in parts) + "\x1e" + secret
        return hmac.new(self._hmac_key, msg.encode(), hashlib.sha256).digest()

    def _per_credential(self, kind: str, context: Any, build: Any) -> Any:
        """``build()``, reused per credential for ``[byok] session_ttl`` seconds (a cachetools
        TTL cache, LRU-bounded); uncached for a credential shape we cannot key safely or with
        the TTL at 0."""
        ttl = self.conf.byok.session_ttl
        key = self._credential_key(context) if context and ttl else None
        if key is None:
            return build()
        with self._lock:
            cache = self._caches.get(kind)
            if cache is None or cache.ttl != ttl:
                cache = self._caches[kind] = cachetools.TTLCache(
                    maxsize=self.conf.byok.session_cache_size, ttl=ttl)
            hit = cache.get(key)
        if hit is not None:
            return hit
        value = build()
        with self._lock:
            cache[key] = value
        return value

    def _get_barbican_client(self, context: Any) -> Any:
        """castellan's client, built on a session with a request timeout (castellan's has none,
        so a paused Barbican would hang the caller), reused per credential."""
        if not context:
            return super()._get_barbican_client(context)  # raises Forbidden

        def build() -> Any:
            from barbicanclient import client as bclient
            from keystoneauth1 import session as ks_session

            from byok.keys.identity import KEYSTONE_TIMEOUT

            try:
                auth = self._get_keystone_auth(context)
                sess = ks_session.Session(auth=auth, verify=self._verify,
                                          timeout=KEYSTONE_TIMEOUT)
                return bclient.Client(version=self.conf.barbican.barbican_api_version,
                                      session=sess,
                                      endpoint=self._get_barbican_endpoint(auth, sess))
            except Exception as e:  # castellan's contract: a KeyManagerError, with the reason
                raise cexc.KeyManagerError(reason=e) from e

        return self._per_credential("clients", context, build)

    def _api(self, context: Any) -> Any:
        """byok's Barbican calls (typed errors, the retry policy) on this context's client."""
        from byok.keys.barbican import BarbicanAPI

        client = self._get_barbican_client(context)
        return BarbicanAPI(None, self.conf.barbican.barbican_endpoint or "", client=client)

    # -- ownership ---------------------------------------------------------------------------
    def _mark_service_owned(self, context: Any, object_id: str) -> None:
        from byok.common.errors import ByokError
        from byok.keys.ref import KeyRef

        try:
            self._api(context).set_metadata(KeyRef(object_id), {OWNER_KEY: OWNER_SERVICE})
        except ByokError as e:
            # Unmarked means user-owned: the safe direction (it can leak, never be deleted).
            LOG.warning("could not mark secret %s as service-owned: %s", object_id, e)

    def is_user_owned(self, context: Any, object_id: str) -> bool:
        """True unless the secret carries this backend's service-owner mark."""
        from byok.common.errors import ByokError, KeyAccessDenied, KeyNotFound
        from byok.keys.ref import KeyRef

        try:
            metadata = self._api(context).metadata(KeyRef(object_id))
        except KeyNotFound as e:
            raise cexc.ManagedObjectNotFoundError(uuid=object_id) from e
        except KeyAccessDenied:
            return True  # cannot read the mark: the user's (never delete what we can't vouch for)
        except ByokError as e:
            raise cexc.KeyManagerError(reason=e) from e
        return bool(metadata.get(OWNER_KEY) != OWNER_SERVICE)

    def _digest(self, obj: Any) -> bytes | None:
        try:
            data = obj.get_encoded()
        except Exception:
            return None
        if data is None:
            return None
        if isinstance(data, str):  # castellan returns passphrase payloads as text
            data = data.encode()
        return hmac.new(self._hmac_key, data, hashlib.sha256).digest()

    def _consumer(self, volume_id: str) -> dict[str, str]:
        return {
            "service": self.conf.byok.consumer_service,
            "resource_type": "volume",
            "resource_id": volume_id,
        }

    # -- castellan API -----------------------------------------------------------------------
    def create_key(self, context: Any, algorithm: str, length: int,
                   expiration: Any = None, name: str | None = None) -> str:
        key_id = str(super().create_key(context, algorithm, length, expiration=expiration,
                                        name=name))
        self._mark_service_owned(context, key_id)
        return key_id

    def _identity(self, context: Any) -> Any:
        """byok's identity for a castellan credential, reused like the clients above."""
        from byok.keys.identity import Identity

        return self._per_credential("identities", context, lambda: Identity.from_castellan(
            context, auth_url=self.conf.barbican.auth_endpoint))

    def get_for_volume(self, context: Any, managed_object_id: str, volume_id: str) -> Any:
        """The key of ``volume_id`` through byok's key path
        (:func:`byok.keys.guard.resolve_volume_key`): validated as a volume key; a user's context
        binds the volume as a consumer, a service's context needs the owner's ACL and that
        consumer. castellan's exceptions, typed reason."""
        from byok.common.errors import ByokError, KeyNotFound
        from byok.keys import guard

        try:
            km = guard.resolve_volume_key(
                str(managed_object_id), identity=self._identity(context), volume_id=volume_id,
                service=self.conf.byok.consumer_service,
                endpoint=self.conf.barbican.barbican_endpoint or None,
            )
        except KeyNotFound as e:
            raise cexc.ManagedObjectNotFoundError(uuid=managed_object_id) from e
        except ByokError as e:
            raise cexc.KeyManagerError(reason=f"{type(e).__name__}: {e}") from e
        return km.castellan_object()

    def get(self, context: Any, managed_object_id: str, metadata_only: bool = False) -> Any:
        volume = current_volume()
        if volume and not metadata_only and context:
            obj = self.get_for_volume(context, managed_object_id, volume)
        else:
            with quiet_http_logs():  # the payload answer would otherwise be debug-logged
                obj = super().get(context, managed_object_id, metadata_only=metadata_only)
        if not metadata_only:
            digest = self._digest(obj)
            if digest is not None:
                with self._lock:
                    self._fetched_digests[str(managed_object_id)] = digest
        return obj

    def store(self, context: Any, managed_object: Any, expiration: Any = None) -> str:
        source_id = getattr(managed_object, "id", None)
        if context and source_id:
            with self._lock:
                seen = self._fetched_digests.get(str(source_id))
            if seen is not None and hmac.compare_digest(seen, self._digest(managed_object) or b""):
                if self.is_user_owned(context, source_id):
                    volume = current_volume()
                    if volume:
                        self.add_consumer(context, source_id, self._consumer(volume))
                    LOG.info("byok: storing user-owned key %s again returns it (shared, not "
                             "copied)", source_id)
                    return str(source_id)
        with quiet_http_logs():  # the POST body carries the key
            new_id = str(super().store(context, managed_object, expiration=expiration))
        self._mark_service_owned(context, new_id)
        return new_id

    def delete(self, context: Any, managed_object_id: str, force: bool = False) -> None:
        if not context:
            super().delete(context, managed_object_id, force)  # raises Forbidden
            return
        if not managed_object_id:
            raise cexc.KeyManagerError("key identifier not provided")
        if not self.is_user_owned(context, managed_object_id):
            super().delete(context, managed_object_id, force)
            return
        volume = current_volume()
        if volume:
            try:
                self.remove_consumer(context, managed_object_id, self._consumer(volume))
            except cexc.ManagedObjectNotFoundError:  # not registered, or already gone: done
                LOG.info("byok: volume %s was no consumer of %s (any more)", volume,
                         managed_object_id)
            # Anything else (Barbican down, a 5xx) propagates: had delete returned, the caller
            # would forget the volume and its consumer would dangle for good; failing, the
            # caller's retry of delete removes it.
        LOG.info("byok: not deleting user-owned key %s (volume %s released it)",
                 managed_object_id, volume or "unknown")
        return None

    def list_options_for_discovery(self) -> list[tuple[str | None, list[Any]]]:
        return [*super().list_options_for_discovery(), (BYOK_GROUP, list(_byok_opts))]
