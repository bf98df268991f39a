"""A small client of Cinder's block-storage v3 REST API, on a user's keystoneauth session.

What Nova and the clients do, and nothing more: requests at an explicit microversion
(``OpenStack-API-Version: volume 3.72``, the series' user-key field), waiting for a status,
the attachment API with a connector, ``GET /volumes/{id}/encryption``. Errors are
:class:`~byok.common.errors.CinderError` with the status and Cinder's message.
"""

from __future__ import annotations

import time
from typing import Any

from byok.common.errors import CinderError

MICROVERSION = "3.72"
KINDS = {"volume": "volumes", "backup": "backups", "snapshot": "snapshots"}


class CinderAPI:
    """Cinder as one identity sees it (``identity.session``: a keystoneauth session)."""

    def __init__(self, identity: Any, api_url: str, *, timeout: float = 300.0,
                 request_timeout: float = 120.0) -> None:
        self.identity = identity
        self.base = f"{api_url.rstrip('/')}/v3/{identity.project_id()}"
        self.timeout = timeout
        # Some requests do work before they answer (a restore without a target volume creates
        # it and waits for it inside the request): longer than the identity's Keystone timeout.
        self.request_timeout = request_timeout

    def request(self, method: str, path: str, body: dict | None = None, *,
                version: str = MICROVERSION, ok: tuple[int, ...] = (200, 202, 204),
                service: Any = None) -> Any:
        r = self.raw(method, path, body, version=version, service=service)
        if r.status_code not in ok:
            raise CinderError(f"Cinder {method} {path}: HTTP {r.status_code}: "
                              f"{_message(r)}", status=r.status_code)
        return r.json() if r.content and r.status_code != 204 else None

    def raw(self, method: str, path: str, body: dict | None = None, *,
            version: str = MICROVERSION, service: Any = None):
        """The response itself (any status): for checks on refusals. ``service``: an identity
        whose token goes along as ``X-Service-Token`` (as Nova sends its own)."""
        headers = {"OpenStack-API-Version": "volume " + version}
        if service is not None:
            headers["X-Service-Token"] = service.token()
        return self.identity.session.request(
            self.base + path, method, json=body, raise_exc=False,
            timeout=self.request_timeout, headers=headers)

    # -- resources ---------------------------------------------------------------------------
    def create_volume(self, size: int = 1, **fields: Any) -> dict:
        body = {"volume": {"size": size, **{k: v for k, v in fields.items() if v is not None}}}
        return self.request("POST", "/volumes", body)["volume"]

    def create_backup(self, volume_id: str, **fields: Any) -> dict:
        return self.request("POST", "/backups", {"backup": {"volume_id": volume_id,
                                                            **fields}})["backup"]

    def restore_backup(self, backup_id: str, volume_id: str | None = None) -> dict:
        body = {"restore": {"volume_id": volume_id} if volume_id else {}}
        return self.request("POST", f"/backups/{backup_id}/restore", body)["restore"]

    def get(self, kind: str, rid: str) -> dict:
        return self.request("GET", f"/{KINDS[kind]}/{rid}")[kind]

    def delete(self, kind: str, rid: str) -> None:
        self.request("DELETE", f"/{KINDS[kind]}/{rid}")

    def wait(self, kind: str, rid: str, want: str, *, timeout: float | None = None
             ) -> dict | None:
        """Poll until the resource has status ``want`` (``"deleted"``: until it is gone)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            r = self.raw("GET", f"/{KINDS[kind]}/{rid}")
            if r.status_code == 404 and want == "deleted":
                return None
            if r.status_code != 200:
                raise CinderError(f"Cinder GET {kind} {rid}: HTTP {r.status_code}: "
                                  f"{_message(r)}", status=r.status_code)
            res = r.json()[kind]
            if res["status"] == want:
                return res
            if res["status"].startswith("error") or time.monotonic() > deadline:
                raise CinderError(f"{kind} {rid} is {res['status']}, wanted {want}"
                                  + (f" (after {timeout or self.timeout:g} s)"
                                     if not res["status"].startswith("error") else ""),
                                  status=None)
            time.sleep(0.2)

    def delete_and_wait(self, kind: str, rid: str) -> None:
        self.delete(kind, rid)
        self.wait(kind, rid, "deleted")

    # -- attach as Nova does -----------------------------------------------------------------
    def attach(self, volume_id: str, connector: dict, instance_uuid: str) -> dict:
        """Create an attachment with a connector (3.27+): Cinder answers with connection_info."""
        body = {"attachment": {"volume_uuid": volume_id, "instance_uuid": instance_uuid,
                               "connector": connector}}
        return self.request("POST", "/attachments", body)["attachment"]

    def complete_attachment(self, attachment_id: str) -> None:
        self.request("POST", f"/attachments/{attachment_id}/action", {"os-complete": None})

    def detach(self, attachment_id: str, *, service: Any = None) -> None:
        """Delete the attachment. Cinder 29 asks Nova first whether the server still uses the
        volume (bug 2004555) unless the request carries a service token, as Nova's own does:
        pass the nova service identity as ``service`` (there is no Nova here to ask)."""
        self.request("DELETE", f"/attachments/{attachment_id}", service=service)

    def encryption(self, volume_id: str) -> dict:
        """What Nova reads before it attaches: ``GET /volumes/{id}/encryption``."""
        return self.request("GET", f"/volumes/{volume_id}/encryption")

    # -- admin -------------------------------------------------------------------------------
    def services(self) -> list[dict]:
        return self.request("GET", "/os-services")["services"]

    def ensure_luks_type(self, name: str = "luks", *, key_size: int = 256) -> dict:
        """The encrypted volume type (LUKS1, front-end: os-brick's dm-crypt or QEMU's native
        driver), created once (admin). 256 bits: the keys Cinder orders itself come from
        Barbican's simple_crypto plugin, which makes AES keys of up to 256 bits."""
        types = self.request("GET", "/types?is_public=None")["volume_types"]
        vtype = next((t for t in types if t["name"] == name), None)
        if vtype is None:
            vtype = self.request("POST", "/types", {"volume_type": {"name": name}})[
                "volume_type"]
        enc = self.request("GET", f"/types/{vtype['id']}/encryption")
        if not enc or not enc.get("provider"):
            self.request("POST", f"/types/{vtype['id']}/encryption", {"encryption": {
                "provider": "luks", "cipher": "aes-xts-plain64", "key_size": key_size,
                "control_location": "front-end"}})
        elif enc.get("key_size") != key_size:
            self.request("PUT", f"/types/{vtype['id']}/encryption/{enc['encryption_id']}",
                         {"encryption": {"key_size": key_size}})
        return vtype


def _message(r) -> str:
    try:
        doc = r.json()
    except ValueError:
        return r.text[:300]
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, dict) and "message" in v:
                return str(v["message"])
    return str(doc)[:300]
