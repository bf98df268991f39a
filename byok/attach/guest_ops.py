"""The attach layer's steps inside the guest: os-brick's (guarded) encryptors on real dm-crypt.

The guest agent is a generic step runner; the hook adds these ops to a job by naming this module
(``op_modules``), so the guest layer itself never depends on the attach layer. Nothing here
talks to Keystone or Barbican: the host resolved the key, and os-brick gets it from
:class:`PreResolvedKeyManager`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from byok.attach.encryptor import encryptor
from byok.common import proc
from byok.common.errors import FormatRefused
from byok.common.retry import retry
from byok.common.sensitive import Sensitive

MAPPER = "/dev/mapper"


def lean_execute(argv: list[str], *, process_input: Any = None, check_exit_code: Any = True,
                 attempts: int = 1, **_ignored: Any) -> tuple[str, str]:
    """os-brick's executor contract (processutils.execute's) on byok's process boundary.

    We are root in the guest, so root_helper/run_as_root are moot. processutils passes a
    preexec_fn, which forces Python's fork+exec path; under User-Mode Linux or TCG every fork of
    this large process costs ~0.1 s, so the lean path (vfork/posix_spawn) is what a compute
    host's privsep daemon would cost relative to cryptsetup, not an artefact of the guest.
    """
    from oslo_concurrency import processutils

    ok = [0] if check_exit_code is True else (check_exit_code or None)
    data = Sensitive(process_input) if process_input else None  # os-brick's passphrase

    @retry(processutils.ProcessExecutionError, retries=max(1, attempts), interval=0)
    def once() -> tuple[str, str]:
        r = proc.run(argv, input=data, check=False, timeout=600, what=Path(argv[0]).name)
        if ok is not None and r.returncode not in ok:
            raise processutils.ProcessExecutionError(exit_code=r.returncode, stdout=r.out,
                                                     stderr=r.err, cmd=" ".join(argv))
        return r.out, r.err

    return once()


class PreResolvedKeyManager:
    """A castellan key manager that serves the one key the host already resolved.

    Not a fake of Barbican: the host resolved the key against the real Barbican through
    :func:`byok.keys.guard.resolve_volume_key` — the very function the castellan backend ``byok``
    runs in ``get`` for a volume — and the guest has no network, so the resolved castellan object
    is handed over and this class returns it when os-brick calls ``get``. That os-brick's own
    encryptor code, given backend ``byok`` itself, derives the same passphrase is tested on the
    host (tests/integration/test_key_path.py).
    """

    def __init__(self, obj: Any, key_id: str) -> None:
        self.obj = obj
        self.key_id = key_id
        self.calls = 0

    def get(self, context: Any, managed_object_id: str, metadata_only: bool = False) -> Any:
        self.calls += 1
        if managed_object_id != self.key_id:
            raise KeyError(managed_object_id)
        return self.obj


def key_object(raw: bytes, step: dict) -> Any:
    """The castellan object os-brick would get from Barbican for this key."""
    from castellan.common.objects import passphrase, symmetric_key

    key_id = step.get("key_id", step["key"])
    if step.get("secret_type") == "passphrase":
        return passphrase.Passphrase(raw, id=key_id)
    return symmetric_key.SymmetricKey("AES", len(raw) * 8, raw, id=key_id)


def osbrick_attach(agent: Any, step: dict) -> dict:
    from oslo_concurrency import processutils

    disk = agent.disks[step["disk"]]
    agent._connect(disk)
    link = disk.get("link") or disk["dev"]
    key_id = step.get("key_id", step["key"])
    keymgr = PreResolvedKeyManager(key_object(agent.secrets[step["key"]], step), key_id)
    commands: list[list[str]] = []
    timings: list[float] = []

    def execute(*cmd: Any, **kw: Any) -> tuple[str, str]:
        argv = [str(c) for c in cmd]
        commands.append(argv)
        t0 = time.monotonic()
        try:
            return lean_execute(argv, **kw)
        finally:
            timings.append(time.monotonic() - t0)

    enc = encryptor(
        step.get("provider", "luks2"), guard=step.get("guard", True),
        allow_format=step.get("allow_format", False), root_helper=None,
        connection_info={"driver_volume_type": "byok-disk",
                         "data": {"device_path": link, "volume_id": step["disk"]}},
        keymgr=keymgr, execute=execute, encryption_key_id=key_id)
    kwargs = {}
    if step.get("cipher"):
        kwargs["cipher"] = step["cipher"]
    if step.get("key_size"):
        kwargs["key_size"] = str(step["key_size"])
    try:
        enc.attach_volume(None, **kwargs)
    except processutils.ProcessExecutionError as e:
        raise RuntimeError(
            json.dumps({"exit_code": e.exit_code, "cmd": (e.cmd or "")[:200],
                        "stderr": (e.stderr or "")[-300:], "commands": commands})
        ) from None
    except FormatRefused as e:
        raise FormatRefused(json.dumps({"message": str(e), "commands": commands})) from None
    agent.encryptors[step["disk"]] = enc
    return {
        "mapper": f"{MAPPER}/{enc.dev_name}",
        "symlink_target": os.path.realpath(link),
        "commands": commands,
        "formatted": any("luksFormat" in c for c in commands),
        "command_seconds": timings,
        "keymgr_calls": keymgr.calls,
    }


def osbrick_detach(agent: Any, step: dict) -> dict:
    enc = agent.encryptors.pop(step["disk"])
    enc.detach_volume()
    return {"closed": enc.dev_name}


OPS = {"osbrick_attach": osbrick_attach, "osbrick_detach": osbrick_detach}

