"""Barbican's REST API as one identity sees it: typed errors, bounded retries, a total deadline.

Why not barbicanclient here: byok needs exact control of what a failure means (403 vs 404 vs a
truncated body vs a hang) and of how long a caller may wait; barbicanclient hides status codes
behind lazy attributes and has no deadline. The HTTP itself goes through the identity's
keystoneauth Session (token reuse, re-authentication on expiry), so this stays thin.

Retry policy (tenacity): connection failures, timeouts, 5xx answers and unparseable bodies are
transient and retried with jittered exponential back-off until ``deadline`` seconds have passed
since the call began; then :class:`KeyServiceUnavailable` names the endpoint that failed.
401/403/404/409 are answers, not outages, and are never retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import tenacity

from byok.common.errors import (
    IdentityError,
    KeyAccessDenied,
    KeyNotFound,
    KeyServiceError,
    KeyServiceUnavailable,
    SecretConflict,
)
from byok.common.sensitive import Sensitive, quiet_http_logs
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef

LOG = logging.getLogger(__name__)

MICROVERSION = "key-manager 1.2"  # 1.1: consumers; 1.2: deleting a consumed secret needs force
DEFAULT_DEADLINE = 10.0
ATTEMPT_TIMEOUT = 3.0


class _Transient(Exception):
    """An attempt failed in a way worth retrying; carries the message for the final error."""

    def __init__(self, message: str, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


_URL = re.compile(r"https?://[^\s'\"]+")


class BarbicanAPI:
    """REST calls to one Barbican endpoint with one identity."""

    def __init__(
        self,
        identity: Identity,
        endpoint: str,
        *,
        deadline: float = DEFAULT_DEADLINE,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.identity = identity
        self.endpoint = endpoint.rstrip("/")
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.attempts = 0  # total HTTP attempts made (for experiments on outages)

    # -- plumbing ----------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        ref: KeyRef | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: Iterable[int] = (200,),
        want: str = "json",
        secret_bearing: bool = False,
    ) -> Any:
        from keystoneauth1 import exceptions as ks_exc
        from requests import exceptions as rq_exc

        ok = tuple(ok)
        start = time.monotonic()
        hdrs = {"OpenStack-API-Version": MICROVERSION, **(headers or {})}
        subject = f" {ref.secret_id}" if ref else ""

        def attempt() -> Any:
            self.attempts += 1
            remaining = self.deadline - (time.monotonic() - start)
            timeout = max(0.2, min(self.attempt_timeout, remaining))
            try:
                with quiet_http_logs() if secret_bearing else contextlib.nullcontext():
                    resp = self.identity.session.request(
                        url, method, json=json_body, headers=hdrs, raise_exc=False,
                        timeout=timeout, connect_retries=0, status_code_retries=0,
                        log=not secret_bearing,
                    )
            except ks_exc.Unauthorized as e:
                raise IdentityError(f"Keystone refused {self.identity.name}: {e}") from e
            except ks_exc.HttpError as e:
                # Only the token request raises here (Barbican's answers come back raw): a 5xx
                # from Keystone is an outage, a 4xx a refusal of these credentials.
                if (e.http_status or 0) >= 500:
                    raise _Transient(f"Keystone answered HTTP {e.http_status} to the token "
                                     "request", self.identity.auth_url) from e
                raise IdentityError(f"Keystone refused {self.identity.name}: {e}") from e
            except ks_exc.InvalidResponse as e:
                raise _Transient("unparseable answer from Keystone to the token request",
                                 self.identity.auth_url) from e
            except (ks_exc.ConnectionError, ks_exc.DiscoveryFailure, rq_exc.RequestException) as e:
                failed = _URL.search(str(e))
                where = failed.group(0) if failed else self.endpoint
                raise _Transient(f"{type(e).__name__}: {where}", where) from e
            code = resp.status_code
            if code in ok:
                if want == "json":
                    if code == 204 or not resp.content:
                        return {}
                    try:
                        return resp.json()
                    except (ValueError, json.JSONDecodeError):
                        raise _Transient(
                            f"unparseable answer to {what} "
                            f"(HTTP {code}, {len(resp.content)} bytes)",
                            url,
                        ) from None
                if want == "bytes":
                    declared = resp.headers.get("Content-Length")
                    if declared is not None and int(declared) != len(resp.content):
                        raise _Transient(f"truncated answer to {what}", url)
                    return resp.content
                return resp
            if code >= 500:
                raise _Transient(f"HTTP {code} from Barbican for {what}", self.endpoint)
            detail = _error_text(resp)
            if code in (401, 403):
                raise KeyAccessDenied(
                    f"{self.identity.name} may not {what}{subject} (HTTP {code}: {detail})",
                    hint="the secret's owner can grant access: byok key grant REF --to USER"
                    if ref else "this identity needs the member role in its project",
                )
            if code == 404:
                raise KeyNotFound(
                    f"secret{subject} not found at {self.endpoint} (deleted, expired, "
                    f"or invisible to {self.identity.name})"
                )
            if code == 406:
                from byok.common.errors import KeyTypeMismatch

                raise KeyTypeMismatch(f"Barbican cannot {what}{subject} as requested: {detail}")
            if code == 409 or (code == 400 and "consumers" in detail):
                # Barbican 23 answers 400 "Secret cannot be deleted as it has consumers".
                raise SecretConflict(
                    f"Barbican refused to {what}{subject}: {detail}",
                    hint="volumes still use it; delete them first, or force (byok key delete "
                    "--force) knowing those volumes can then only be recovered offline",
                )
            raise KeyServiceError(f"Barbican answered HTTP {code} to {what}{subject}: {detail}")

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_before_delay(self.deadline),
            # Small jitter: tenacity's default (up to 1 s) can make the wait before the second
            # retry overshoot a short deadline, giving up on a fault that was about to clear.
            wait=tenacity.wait_exponential_jitter(initial=0.1, max=1.0, jitter=0.25),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as e:
            raise KeyServiceUnavailable(
                f"key service unavailable after {time.monotonic() - start:.1f} s "
                f"({self.attempts} attempts) while trying to {what}: {e}",
                hint=f"endpoint {e.endpoint}; check that Keystone and Barbican are up",
            ) from None

    def _secret_url(self, ref: KeyRef) -> str:
        return ref.bind(self.endpoint).href

    # -- secrets -----------------------------------------------------------------------------
    def secret(self, ref: KeyRef) -> dict:
        return self._request("GET", self._secret_url(ref), what="read secret metadata", ref=ref)

    def payload(self, ref: KeyRef, content_type: str) -> Sensitive:
        data = self._request(
            "GET", self._secret_url(ref) + "/payload", what="read the secret payload", ref=ref,
            headers={"Accept": content_type}, want="bytes", secret_bearing=True,
        )
        return Sensitive(data)

    def store(
        self,
        payload: Sensitive,
        *,
        secret_type: str,
        name: str,
        algorithm: str | None = None,
        bit_length: int | None = None,
        mode: str | None = None,
        expiration: str | None = None,
    ) -> KeyRef:
        import base64

        if secret_type == "passphrase":
            body = {"payload": payload.reveal().decode(), "payload_content_type": "text/plain"}
        else:
            body = {
                "payload": base64.b64encode(payload.reveal()).decode(),
                "payload_content_type": "application/octet-stream",
                "payload_content_encoding": "base64",
            }
        body |= {"name": name, "secret_type": secret_type}
        for k, v in (("algorithm", algorithm), ("bit_length", bit_length), ("mode", mode),
                     ("expiration", expiration)):
            if v is not None:
                body[k] = v
        out = self._request(
            "POST", self.endpoint + "/v1/secrets", what="store a secret", json_body=body,
            ok=(201,), secret_bearing=True,
        )
        return KeyRef(out["secret_ref"].rsplit("/", 1)[1], self.endpoint)

    def delete(self, ref: KeyRef, *, force: bool = False) -> None:
        url = self._secret_url(ref) + ("?force=true" if force else "")
        self._request("DELETE", url, what="delete the secret", ref=ref, ok=(204,))

    def list_secrets(self, *, name: str | None = None, limit: int = 100) -> list[dict]:
        url = f"{self.endpoint}/v1/secrets?limit={limit}" + (f"&name={name}" if name else "")
        return self._request("GET", url, what="list secrets").get("secrets", [])

    def count_secrets(self) -> int:
        return int(self._request("GET", f"{self.endpoint}/v1/secrets?limit=1",
                                 what="count secrets").get("total", 0))

    # -- ACLs --------------------------------------------------------------------------------
    def acl(self, ref: KeyRef) -> dict:
        return self._request("GET", self._secret_url(ref) + "/acl", what="read the ACL", ref=ref)

    def set_acl(self, ref: KeyRef, *, users: list[str], project_access: bool) -> None:
        body = {"read": {"users": users, "project-access": project_access}}
        self._request("PUT", self._secret_url(ref) + "/acl", what="set the ACL", ref=ref,
                      json_body=body, ok=(200, 201))

    # -- consumers ---------------------------------------------------------------------------
    def consumers(self, ref: KeyRef) -> list[dict]:
        out = self._request("GET", self._secret_url(ref) + "/consumers?limit=100",
                            what="list consumers", ref=ref)
        return list(out.get("consumers", []))

    def add_consumer(self, ref: KeyRef, service: str, resource_type: str, resource_id: str) -> None:
        body = {"service": service, "resource_type": resource_type, "resource_id": resource_id}
        self._request("POST", self._secret_url(ref) + "/consumers", what="register a consumer",
                      ref=ref, json_body=body, ok=(200, 201))

    def remove_consumer(
        self, ref: KeyRef, service: str, resource_type: str, resource_id: str
    ) -> None:
        body = {"service": service, "resource_type": resource_type, "resource_id": resource_id}
        self._request("DELETE", self._secret_url(ref) + "/consumers", what="remove a consumer",
                      ref=ref, json_body=body, ok=(200, 204))

    # -- user metadata -----------------------------------------------------------------------
    def metadata(self, ref: KeyRef) -> dict[str, str]:
        out = self._request("GET", self._secret_url(ref) + "/metadata",
                            what="read secret metadata", ref=ref)
        return dict(out.get("metadata", {}))

    def set_metadata(self, ref: KeyRef, metadata: dict[str, str]) -> None:
        self._request("PUT", self._secret_url(ref) + "/metadata", what="set secret metadata",
                      ref=ref, json_body={"metadata": metadata}, ok=(200, 201))


def _error_text(resp: Any) -> str:
    try:
        body = resp.json()
        return str(body.get("description") or body.get("title") or body)[:200]
    except ValueError:
        return (resp.text or "").strip()[:200] or resp.reason or ""
