"""An independent reader of Barbican for the crash checks: plain HTTP on the identity's
keystoneauth session — not byok's key path (resolver, guard, BarbicanAPI) nor barbicanclient,
so a bug in what the checks judge cannot hide itself from them."""

from __future__ import annotations

from typing import Any

from byok.common.errors import ExperimentError

#: Consumers came with key-manager 1.1.
HEADERS = {"OpenStack-API-Version": "key-manager 1.1"}


class RawBarbican:
    """GETs against ``endpoint`` (``.../v1`` is appended) as ``identity``."""

    def __init__(self, identity: Any, endpoint: str) -> None:
        self.session = identity.session
        self.url = endpoint.rstrip("/") + "/v1"

    def _get(self, path: str, *, accept: str = "application/json",
             params: dict[str, Any] | None = None) -> Any:
        r = self.session.get(f"{self.url}/{path}", headers={**HEADERS, "Accept": accept},
                             params=params, raise_exc=False, timeout=30)
        return r

    def _json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self._get(path, params=params)
        if r.status_code != 200:
            raise ExperimentError(f"GET {path}: HTTP {r.status_code}")
        return dict(r.json())

    def consumers(self, secret_id: str) -> set[tuple[str, str, str]]:
        """(service, resource_type, resource_id) of every consumer of the secret."""
        doc = self._json(f"secrets/{secret_id}/consumers", {"limit": 100})
        if doc.get("total", 0) > 100:
            raise ExperimentError(f"{secret_id} has more than 100 consumers")
        return {(c["service"], c["resource_type"], c["resource_id"])
                for c in doc.get("consumers", [])}

    def exists(self, secret_id: str) -> bool:
        r = self._get(f"secrets/{secret_id}")
        if r.status_code not in (200, 404):
            raise ExperimentError(f"GET secrets/{secret_id}: HTTP {r.status_code}")
        return bool(r.status_code == 200)

    def metadata(self, secret_id: str) -> dict[str, str]:
        return dict(self._json(f"secrets/{secret_id}/metadata").get("metadata", {}))

    def named(self, name: str) -> set[str]:
        """Ids of the caller's project's secrets called ``name``."""
        doc = self._json("secrets", {"name": name, "limit": 100})
        return {s["secret_ref"].rsplit("/", 1)[1] for s in doc.get("secrets", [])}

    def total(self) -> int:
        """How many secrets the caller's project holds."""
        return int(self._json("secrets", {"limit": 1}).get("total", 0))

    def payload(self, secret_id: str) -> bytes:
        r = self._get(f"secrets/{secret_id}/payload", accept="application/octet-stream")
        if r.status_code != 200:
            raise ExperimentError(f"GET secrets/{secret_id}/payload: HTTP {r.status_code}")
        return bytes(r.content)
