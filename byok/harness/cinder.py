"""What the Cinder variants of the experiments (``E03-cinder``...) and the Cinder tests share.

* :func:`availability`: the services of ``byok cinder up`` for this stack — started once per
  process when they are not running (and stopped again by :func:`release`, so a run leaves
  nothing behind it did not find), or the reason they cannot start here, which the runner
  records as the variant's skip reason.
* :func:`attach_like_nova` / :func:`read_like_nova`: what Nova does with Cinder's answer — an
  attachment with a connector, its ``connection_info``, ``GET /volumes/{id}/encryption``, the
  key through the castellan backend's path with the user's token — then the volume opened by
  byok's hook on real dm-crypt in a guest and by QEMU's native LUKS driver in a guest.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from byok.common import proc
from byok.common.errors import ByokError
from byok.common.sensitive import Sensitive

#: The connector a compute host sends (os-brick's get_connector_properties, local transport).
CONNECTOR = {"platform": "x86_64", "os_type": "linux", "ip": "127.0.0.1",
             "host": "byok-compute", "multipath": False, "do_local_attach": False,
             "initiator": "iqn.1993-08.org.debian:01:byok-compute"}

_STATE: dict[str, Any] = {"tried": False, "reason": None, "started": None}


def availability(env: Any) -> str | None:
    """None when the Cinder services run for ``env``'s stack (started here if need be),
    else why not (recorded once; later callers get the same answer)."""
    if env.stack is None:
        return "the Cinder variants need the embedded stack (byok cinder runs beside it)"
    if _STATE["tried"]:
        return _STATE["reason"]
    from byok.stack.cinder import CinderServices

    _STATE["tried"] = True
    svc = CinderServices(env.stack)
    try:
        if not svc.status()["healthy"]:
            was_running = svc.running()
            svc.up()
            if not was_running:
                _STATE["started"] = svc
    except ByokError as e:
        _STATE["reason"] = f"the Cinder services cannot start on this machine: {e.message}" + (
            f" ({e.hint})" if e.hint else "")
    return _STATE["reason"]


def release() -> None:
    """Stop the services :func:`availability` started (none it found running)."""
    svc = _STATE["started"]
    _STATE.update(tried=False, reason=None, started=None)
    if svc is not None:
        svc.down()


def services(env: Any):
    from byok.stack.cinder import CinderServices

    return CinderServices(env.stack)


def api(env: Any, user: str = "alice"):
    from byok.stack.cinder_api import CinderAPI

    return CinderAPI(env.identity(user), services(env).api_url)


# -- attach as Nova does -------------------------------------------------------------------------
def attach_like_nova(cinder: Any, volume_id: str) -> tuple[dict, dict, dict]:
    """(attachment, connection_info in os-brick's shape, encryption metadata)."""
    att = cinder.attach(volume_id, CONNECTOR, str(uuid.uuid4()))
    ci = dict(att["connection_info"])
    connection_info = {"driver_volume_type": ci.get("driver_volume_type"),
                       "data": {**ci, "volume_id": volume_id}}
    return att, connection_info, cinder.encryption(volume_id)


def passphrase_like_nova(identity: Any, encryption: dict, volume_id: str,
                         endpoint: str) -> Sensitive:
    """os-brick's passphrase of the volume's key, fetched as the castellan backend ``byok``
    fetches it for Nova (the user's token, bound to this volume)."""
    from byok.keys import guard
    from byok.keys import resolver as keys

    km = guard.resolve_volume_key(encryption["encryption_key_id"], identity=identity,
                                  volume_id=volume_id, endpoint=endpoint)
    return keys.passphrase(km)


def read_like_nova(identity: Any, connection_info: dict, encryption: dict, size: int, *,
                   endpoint: str) -> dict:
    """sha256 of the first ``size`` plaintext bytes through byok's hook (os-brick, dm-crypt in
    a guest) and through QEMU's native LUKS driver (a QEMU guest), for a raw LUKS volume."""
    from byok.attach import hook as hookmod
    from byok.guest import native

    hook = hookmod.AttachHook(identity, endpoint=endpoint)
    v, run = hook.attach(connection_info, encryption,
                         then=lambda v: [hookmod.read_step(v, size, name="read")])
    path = Path(connection_info["data"]["device_path"])
    pw = passphrase_like_nova(identity, encryption, connection_info["data"]["volume_id"],
                              endpoint)
    native_sha, backend = native.native_sha256(path, pw, size)
    return {"hook_sha256": run.step("read")["sha256"], "hook_backend": run.backend,
            "native_sha256": native_sha, "native_backend": backend, "state": v.state}


# -- the qcow2 volumes NfsDriver writes: QEMU's own tools, as Nova's QEMU opens them -------------
def qemu_io(path: Path, passphrase: Sensitive, command: str, *, fmt: str = "qcow2",
            timeout: float = 300) -> proc.Result:
    """``qemu-io -c COMMAND`` on an encrypted volume file (qcow2+LUKS or raw LUKS); the
    passphrase through a memfd, never argv."""
    opts = {"qcow2": "driver=qcow2,encrypt.key-secret=s0,file.filename=",
            "luks": "driver=luks,key-secret=s0,file.filename="}[fmt]
    with proc.secret_fd(passphrase) as (fd, fdpath):
        return proc.run(["qemu-io", "--object", f"secret,id=s0,file={fdpath}", "--image-opts",
                         opts + str(path), "-c", command], pass_fds=[fd], timeout=timeout,
                        check=False, redact=[passphrase], what="qemu-io")


def qemu_write(path: Path, passphrase: Sensitive, data_file: Path, *, fmt: str = "qcow2"
               ) -> bool:
    size = data_file.stat().st_size
    r = qemu_io(path, passphrase, f"write -s {data_file} 0 {size}", fmt=fmt)
    return r.returncode == 0 and f"wrote {size}/{size} bytes" in r.out


def qemu_sha256(path: Path, passphrase: Sensitive, size: int, out: Path, *,
                fmt: str = "qcow2") -> str | None:
    """sha256 of the first ``size`` plaintext bytes (qemu-img convert to a raw file), or None
    when the passphrase does not open it."""
    from byok.common.errors import CommandFailed

    opts = {"qcow2": "driver=qcow2,encrypt.key-secret=s0,file.filename=",
            "luks": "driver=luks,key-secret=s0,file.filename="}[fmt]
    with proc.secret_fd(passphrase) as (fd, fdpath):
        try:
            proc.run(["qemu-img", "dd", "--object", f"secret,id=s0,file={fdpath}",
                      "--image-opts", f"if={opts}{path}", f"of={out}", "-O", "raw",
                      f"bs={size}", "count=1"], pass_fds=[fd], timeout=300,
                     redact=[passphrase], what="qemu-img dd")
        except CommandFailed:
            return None
    try:
        return hashlib.sha256(out.read_bytes()[:size]).hexdigest()
    finally:
        out.unlink(missing_ok=True)


# -- for the experiments -------------------------------------------------------------------------
def track(ctx: Any, cinder: Any, kind: str, rid: str) -> str:
    """Delete the resource when the experiment ends (if it still exists)."""
    def gone() -> None:
        try:
            cinder.delete_and_wait(kind, rid)
        except ByokError:
            pass

    ctx.on_cleanup(gone)
    return rid


def make(ctx: Any, cinder: Any, kind: str, create: Any, *, want: str = "available") -> dict:
    """Create a resource (``create()`` returns Cinder's answer), track it, wait for ``want``."""
    res = create()
    rid = res["volume_id"] if "volume_id" in res and "id" not in res else res["id"]
    track(ctx, cinder, kind, rid)
    return cinder.wait(kind, rid, want)


def volume_file(env: Any, cinder: Any, volume_id: str) -> tuple[Path, str]:
    """(file, format) of a volume as its connection_info names it (an attachment that is
    deleted again, with Nova's service token as Nova deletes its own)."""
    att, ci, _enc = attach_like_nova(cinder, volume_id)
    cinder.detach(att["id"], service=env.identity("nova"))
    return Path(ci["data"]["device_path"]), ci["data"].get("format") or "raw"


def lock_waits(trace: Path, name: str, since: float, until: float) -> list[dict]:
    """The trace records of lock ``name`` acquired between ``since`` and ``until`` (epoch)."""
    import json

    if not trace.exists():
        return []
    out = []
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        if rec["lock"] == name and since <= rec["acquired_at"] <= until:
            out.append(rec)
    return out
