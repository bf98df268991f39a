"""A warm interpreter that runs one byok operation per fork, under the fault injector.

Crashing the CLI at every call costs a new interpreter, its imports and two Keystone logins per
state (about four seconds here, most of it not byok's work). The fork server pays them once: it
starts with the injector preloaded but inactive (``fault_inject.c`` counts nothing without
``BYOK_FAULT_COUNTER``), logs in as the user and the service and closes its connections; then
for each request it forks a child that takes its own session (so a ``tree`` fault kills it and
every cryptsetup it starts), sets the request's fault environment, re-arms the injector
(``byok_fault_rearm``), makes fresh HTTP sessions on the cached tokens (no connection is shared
with the parent or a previous child, which may have died mid-request) and runs the operation —
the same :class:`~byok.lifecycle.volumes.VolumeService` method the CLI calls, or a castellan
flow through the ``byok`` backend. The parent reports the child's exit status.

Protocol: one JSON object per line on stdin/stdout. Fault injection only, named as such: the
operations are byok's real code against the real stack and the real cryptsetup.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from byok.common.errors import ByokError, ExperimentError


class ForkServer:
    """The harness's end: start the server, run tasks, stop it."""

    def __init__(self, injector: Path, setup: dict[str, Any]) -> None:
        env = os.environ | {"LD_PRELOAD": str(injector)}
        for k in [k for k in env if k.startswith("BYOK_FAULT_")]:
            del env[k]
        self.proc = subprocess.Popen([sys.executable, "-m", "byok.harness.forkserver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        reply = self._ask(setup)
        if not reply.get("ready"):
            raise ExperimentError(f"the fork server did not start: {reply}")

    def _ask(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise ExperimentError(f"the fork server exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def run(self, task: dict[str, Any], env: dict[str, str], log: Path) -> int:
        """Run ``task`` in a fresh child with ``env``; its exit code (-9: killed)."""
        return int(self._ask({"task": task, "env": env, "log": str(log)})["status"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the server --------------------------------------------------------------------------------


class _Warm:
    """What the server prepares once: identities with tokens, a castellan backend."""

    def __init__(self, setup: dict[str, Any]) -> None:
        from byok.keys.identity import Identity

        yaml = Path(setup["clouds_yaml"])
        self.endpoint: str = setup["endpoint"]
        self.auth_url: str = setup["auth_url"]
        self.user = Identity.from_cloud(setup["user_cloud"], clouds_yaml=yaml)
        self.service = Identity.from_cloud(setup["service_cloud"], clouds_yaml=yaml)
        for ident in (self.user, self.service):
            ident.token()  # cached in the auth plugin, with the user and project ids
            ident.user_id()
            ident.project_id()
            ident.session.session.close()  # no pooled connection outlives this
        self.km: Any = None
        if setup.get("castellan"):
            from byok.key_manager.byok_key_manager import ByokKeyManager, configure

            self.km = ByokKeyManager(configure(auth_url=self.auth_url,
                                               barbican_endpoint=self.endpoint))

    @staticmethod
    def fresh(ident: Any) -> Any:
        """``ident`` on a new HTTP session (the same auth plugin: its token is reused)."""
        from keystoneauth1 import session as ks_session

        from byok.keys.identity import KEYSTONE_TIMEOUT

        return dataclasses.replace(ident, session=ks_session.Session(
            auth=ident.auth, timeout=KEYSTONE_TIMEOUT))


def _arg(v: Any) -> Any:
    return Path(v["$path"]) if isinstance(v, dict) and "$path" in v else v


def _volume(warm: _Warm, task: dict[str, Any]) -> Any:
    from byok.lifecycle.volumes import Pool, VolumeService

    svc = VolumeService(Pool(Path(task["pool"])), warm.fresh(warm.user),
                        service=warm.fresh(warm.service), endpoint=warm.endpoint)
    out = getattr(svc, task["method"])(*[_arg(a) for a in task.get("args", [])],
                                       **{k: _arg(v) for k, v in task.get("kwargs", {}).items()})
    return getattr(out, "id", None)


def _castellan(warm: _Warm, task: dict[str, Any]) -> Any:
    from castellan.common.credentials import keystone_token

    from byok.key_manager.byok_key_manager import volume_scope

    user = warm.fresh(warm.user)
    ctx = keystone_token.KeystoneToken(token=user.token(), auth_url=warm.auth_url,
                                       project_id=user.project_id())
    km, key_id, flow = warm.km, task.get("key"), task["flow"]
    if flow == "create-key":
        return km.create_key(ctx, "AES", 256, name=task["name"])
    with volume_scope(task["volume"]):
        if flow == "share":  # Cinder's clone_encryption_key: get, then store
            new = km.store(ctx, km.get(ctx, key_id))
            if new != key_id:
                raise ExperimentError(f"the user's key was copied to {new}")
            return new
        if flow == "bind":  # first attach: a volume-scoped get
            km.get(ctx, key_id)
            return key_id
        if flow == "delete":  # Cinder's delete of the volume's key
            km.delete(ctx, key_id)
            return key_id
    raise ExperimentError(f"unknown castellan flow {flow!r}")


TASKS = {"volume": _volume, "castellan": _castellan}


def _child(warm: _Warm, req: dict[str, Any]) -> int:
    os.setsid()  # its own session and group: the tree a "tree" fault kills
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    env = req["env"]
    if env.get("BYOK_FAULT_ROOT"):
        root = os.open(env["BYOK_FAULT_ROOT"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(root, f"{os.getpid()}\n".encode())
        os.close(root)
    os.environ.update(env)
    ctypes.CDLL(None).byok_fault_rearm()  # counting starts with the next call
    task = req["task"]
    try:
        result = TASKS[task["kind"]](warm, task)
        print(json.dumps({"result": result}), flush=True)
        return 0
    except ByokError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        return e.exit_code
    except BaseException:
        traceback.print_exc()
        return 1


def serve() -> None:
    if not hasattr(ctypes.CDLL(None), "byok_fault_rearm"):
        raise SystemExit("the fault injector is not preloaded (LD_PRELOAD)")
    warm = _Warm(json.loads(sys.stdin.readline()))
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(warm, req)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
