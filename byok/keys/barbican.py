"""The one Barbican client of byok: python-barbicanclient (castellan's own) with typed errors,
one retry policy and a total deadline, as one identity sees one endpoint.

barbicanclient does the HTTP (on the identity's keystoneauth session: token reuse,
re-authentication, a per-request timeout); this module decides what a failure *means* — 403 vs
404 vs an outage — and how long a caller may wait. The castellan backend builds its client the
same way and goes through :class:`BarbicanAPI` for what it adds (ownership marks, consumers).

Retry policy (:func:`retrying`): connection failures, timeouts, 5xx answers and unparseable
bodies are transient and retried with jittered exponential back-off until ``deadline`` seconds
have passed since the call began; then :class:`KeyServiceUnavailable` names the endpoint.
401/403/404/409 are answers, not outages, and are never retried.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from byok.common.errors import (
    ByokError,
    IdentityError,
    KeyAccessDenied,
    KeyNotFound,
    KeyServiceError,
    KeyServiceUnavailable,
    KeyTypeMismatch,
    SecretConflict,
)
from byok.common.sensitive import Sensitive, quiet_http_logs
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef

LOG = logging.getLogger(__name__)

MICROVERSION = "1.2"  # 1.1: consumers; 1.2: deleting a consumed secret needs force
DEFAULT_DEADLINE = 10.0
ATTEMPT_TIMEOUT = 3.0
T = TypeVar("T")
_URL = re.compile(r"https?://[^\s'\"]+")


class _Transient(Exception):
    """An attempt failed in a way worth retrying; carries the message for the final error."""

    def __init__(self, message: str, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


def retrying(deadline: float) -> tenacity.Retrying:
    """The one retry policy for Barbican calls: transient failures only, until ``deadline``."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Transient),
        stop=tenacity.stop_before_delay(deadline),
        # Small jitter: tenacity's default (up to 1 s) can make the wait before the second retry
        # overshoot a short deadline, giving up on a fault that was about to clear.
        wait=tenacity.wait_exponential_jitter(initial=0.1, max=1.0, jitter=0.25),
        reraise=True,
    )


class BarbicanAPI:
    """Barbican calls for one identity at one endpoint, through barbicanclient."""

    def __init__(self, identity: Identity | None, endpoint: str, *,
                 deadline: float = DEFAULT_DEADLINE, attempt_timeout: float = ATTEMPT_TIMEOUT,
                 client: Any = None) -> None:
        self.identity = identity
        self.endpoint = endpoint.rstrip("/")
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.attempts = 0  # total attempts made (for experiments on outages)
        self._client = client
        self._who = identity.name if identity else "this identity"

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """barbicanclient's Client (built on first use: it asks the endpoint for versions)."""
        if self._client is None:
            from barbicanclient import client as bclient

            assert self.identity is not None
            self._client = bclient.Client(session=self.identity.session, endpoint=self.endpoint,
                                          microversion=MICROVERSION)
        return self._client

    def _timeout(self, start: float) -> float:
        return max(0.2, min(self.attempt_timeout, self.deadline - (time.monotonic() - start)))

    def _call(self, what: str, fn: Callable[[float], T], *, ref: KeyRef | None = None,
              secret_bearing: bool = False) -> T:
        """``fn(timeout)`` under the retry policy, every failure mapped to a typed error."""
        start = time.monotonic()

        def attempt() -> T:
            self.attempts += 1
            with quiet_http_logs() if secret_bearing else contextlib.nullcontext():
                try:
                    return fn(self._timeout(start))
                except (ByokError, _Transient):
                    raise
                except Exception as e:
                    raise self._classify(e, what, ref) from e

        try:
            return retrying(self.deadline)(attempt)
        except _Transient as e:
            raise KeyServiceUnavailable(
                f"key service unavailable after {time.monotonic() - start:.1f} s "
                f"({self.attempts} attempts) while trying to {what}: {e}",
                hint=f"endpoint {e.endpoint}; check that Keystone and Barbican are up",
            ) from None

    def _classify(self, e: Exception, what: str, ref: KeyRef | None) -> Exception:
        from barbicanclient import exceptions as bexc
        from keystoneauth1 import exceptions as ks_exc
        from requests import exceptions as rq_exc

        subject = f" {ref.secret_id}" if ref else ""
        auth_url = self.identity.auth_url if self.identity else self.endpoint
        if isinstance(e, ks_exc.Unauthorized):
            return IdentityError(f"Keystone refused {self._who}: {e}")
        if isinstance(e, ks_exc.HttpError):
            # Only the token request raises these (Barbican's answers come back through
            # barbicanclient): a 5xx from Keystone is an outage, a 4xx a refusal.
            if (e.http_status or 0) >= 500:
                return _Transient(f"Keystone answered HTTP {e.http_status} to the token request",
                                  auth_url)
            return IdentityError(f"Keystone refused {self._who}: {e}")
        if isinstance(e, ks_exc.InvalidResponse):
            return _Transient("unparseable answer from Keystone to the token request", auth_url)
        if isinstance(e, (ks_exc.ConnectionError, ks_exc.DiscoveryFailure,
                          rq_exc.RequestException)):
            failed = _URL.search(str(e))
            where = failed.group(0) if failed else self.endpoint
            return _Transient(f"{type(e).__name__}: {where}", where)
        if isinstance(e, bexc.HTTPServerError):
            return _Transient(f"HTTP {e.status_code} from Barbican for {what}", self.endpoint)
        if isinstance(e, ValueError):  # a body that is not the JSON it claims to be
            return _Transient(f"unparseable answer to {what} ({e})", self.endpoint)
        if isinstance(e, bexc.SecretHasConsumers):
            return _conflict(what, subject, str(e))
        if isinstance(e, bexc.HTTPAuthError | bexc.HTTPClientError):
            code = getattr(e, "status_code", None) or 401
            detail = str(e)[:200]
            if code in (401, 403):
                return KeyAccessDenied(
                    f"{self._who} may not {what}{subject} (HTTP {code}: {detail})",
                    hint="the secret's owner can grant access: byok key grant REF --to USER"
                    if ref else "this identity needs the member role in its project")
            if code == 404:
                return KeyNotFound(f"secret{subject} not found at {self.endpoint} (deleted, "
                                   f"expired, or invisible to {self._who})")
            if code == 406:
                return KeyTypeMismatch(f"Barbican cannot {what}{subject} as requested: {detail}")
            if code == 409 or (code == 400 and "consumers" in detail):
                # Barbican 23 answers 400 "Secret cannot be deleted as it has consumers".
                return _conflict(what, subject, detail)
            return KeyServiceError(f"Barbican answered HTTP {code} to {what}{subject}: {detail}")
        return KeyServiceError(f"unexpected failure during {what}{subject}: "
                               f"{type(e).__name__}: {e}")

    def _path(self, ref: KeyRef, tail: str = "") -> str:
        return f"secrets/{ref.secret_id}{tail}"

    # -- secrets -----------------------------------------------------------------------------
    def secret(self, ref: KeyRef) -> dict[str, Any]:
        """The secret's metadata document (name, type, algorithm, consumers...)."""
        return self._call("read secret metadata", lambda t: self.client.client.get(
            self._path(ref), timeout=t), ref=ref)

    def payload(self, ref: KeyRef, content_type: str) -> Sensitive:
        def fetch(t: float) -> bytes:
            return bytes(self.client.client.request(
                self._path(ref, "/payload"), "GET", headers={"Accept": content_type},
                timeout=t, log=False).content)

        return Sensitive(self._call("read the secret payload", fetch, ref=ref,
                                    secret_bearing=True))

    def store(self, payload: Sensitive, *, secret_type: str, name: str,
              algorithm: str | None = None, bit_length: int | None = None,
              mode: str | None = None, expiration: str | None = None) -> KeyRef:
        raw = payload.reveal()

        def post(_t: float) -> str:
            secret = self.client.secrets.create(
                name=name, payload=raw.decode() if secret_type == "passphrase" else raw,
                secret_type=secret_type, algorithm=algorithm, bit_length=bit_length, mode=mode,
                expiration=expiration)
            return str(secret.store())

        href = self._call("store a secret", post, secret_bearing=True)
        return KeyRef(href.rsplit("/", 1)[1], self.endpoint)

    def post_secret(self, document: dict[str, Any]) -> KeyRef:
        """Create a secret from a document exactly as Barbican's API takes it (no checks here:
        what Barbican accepts but no volume can use is the resolver's to refuse)."""
        out = self._call("store a secret", lambda t: self.client.client.post(
            "secrets", json=document, timeout=t), secret_bearing=True)
        return KeyRef(str(out["secret_ref"]).rsplit("/", 1)[1], self.endpoint)

    def delete(self, ref: KeyRef, *, force: bool = False) -> None:
        self._call("delete the secret", lambda t: self.client.client.request(
            self._path(ref), "DELETE", params={"force": 1} if force else None, timeout=t),
            ref=ref)

    def list_secrets(self, *, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params = {"limit": limit, **({"name": name} if name else {})}
        return list(self._call("list secrets", lambda t: self.client.client.get(
            "secrets", params=params, timeout=t)).get("secrets", []))

    def count_secrets(self) -> int:
        return int(self._call("count secrets", lambda t: self.client.client.get(
            "secrets", params={"limit": 1}, timeout=t)).get("total", 0))

    # -- ACLs --------------------------------------------------------------------------------
    def acl(self, ref: KeyRef) -> dict[str, Any]:
        return dict(self._call("read the ACL", lambda t: self.client.client.get(
            self._path(ref, "/acl"), timeout=t), ref=ref))

    def set_acl(self, ref: KeyRef, *, users: list[str], project_access: bool) -> None:
        body = {"read": {"users": users, "project-access": project_access}}
        self._call("set the ACL", lambda t: self.client.client.request(
            self._path(ref, "/acl"), "PUT", json=body, timeout=t), ref=ref)

    # -- consumers ---------------------------------------------------------------------------
    def consumers(self, ref: KeyRef) -> list[dict[str, Any]]:
        out = self._call("list consumers", lambda t: self.client.client.get(
            self._path(ref, "/consumers"), params={"limit": 100}, timeout=t), ref=ref)
        return list(out.get("consumers", []))

    def add_consumer(self, ref: KeyRef, service: str, resource_type: str, resource_id: str) -> None:
        self._call("register a consumer", lambda _t: self.client.secrets.register_consumer(
            ref.secret_id, service, resource_type, resource_id), ref=ref)

    def remove_consumer(self, ref: KeyRef, service: str, resource_type: str,
                        resource_id: str) -> None:
        self._call("remove a consumer", lambda _t: self.client.secrets.remove_consumer(
            ref.secret_id, service, resource_type, resource_id), ref=ref)

    # -- user metadata -----------------------------------------------------------------------
    def metadata(self, ref: KeyRef) -> dict[str, str]:
        out = self._call("read secret metadata", lambda _t: self.client.secrets
                         .get_secret_metadata(ref.secret_id), ref=ref)
        return dict(out.get("metadata", out) if isinstance(out, dict) else {})

    def set_metadata(self, ref: KeyRef, metadata: dict[str, str]) -> None:
        self._call("set secret metadata", lambda _t: self.client.secrets.set_secret_metadata(
            ref.secret_id, metadata), ref=ref)


def _conflict(what: str, subject: str, detail: str) -> SecretConflict:
    return SecretConflict(
        f"Barbican refused to {what}{subject}: {detail}",
        hint="volumes still use it; delete them first, or force (byok key delete --force) "
        "knowing those volumes can then only be recovered offline")
