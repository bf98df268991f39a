"""Run inside a guest kernel by test_host_backend_runs_on_a_kernel_with_device_mapper: exercises
the ``host`` backend for real (loop devices, the agent as a child, os-brick's encryptor on
dm-crypt), because this machine's own kernel has no device-mapper. Prints one JSON line."""

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from byok.common import proc
from byok.common.pattern import pattern_sha256
from byok.common.sensitive import Sensitive
from byok.guest import Disk, Guest, select


def main() -> None:
    verdict = select.probe(select.backend("host"))
    key = Sensitive(os.urandom(32))
    passphrase = Sensitive(key.reveal().hex().encode())  # os-brick's rule for a symmetric key
    with tempfile.TemporaryDirectory() as d:
        vol = Path(d) / "vol.img"
        with open(vol, "wb") as f:
            f.truncate(24 << 20)
        proc.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                  "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", vol],
                 input=passphrase, timeout=120)
        attach = {"op": "osbrick_attach", "disk": "v", "key": "k", "key_id": "k",
                  "provider": "luks2", "guard": True}
        run = Guest(backend=select.backend("host")).run([
            attach | {"name": "a1"},
            {"op": "write", "mapper": "crypt-byok-v", "seed": 5, "size": 1 << 20, "name": "w"},
            {"op": "osbrick_detach", "disk": "v", "name": "d1"},
            attach | {"name": "a2"},
            {"op": "sha256", "mapper": "crypt-byok-v", "size": 1 << 20, "name": "r"},
            {"op": "osbrick_detach", "disk": "v", "name": "d2"},
        ], disks=[Disk(vol, "v", link="/dev/disk/by-id/byok-v")], secrets={"k": key},
            op_modules=("byok.attach.guest_ops",))
        losetup = proc.run(["losetup", "-a"], timeout=30).out.strip()
    print(json.dumps({
        "verdict": asdict(verdict),
        "backend": run.backend,
        "ok": [s["name"] for s in run.steps if s.get("ok")],
        "read": run.step("r").get("sha256"),
        "want": pattern_sha256(5, 1 << 20),
        "link_outside_dev": not os.path.lexists("/dev/disk/by-id/byok-v"),
        "loops_left": losetup,
    }))


if __name__ == "__main__":
    main()
    sys.exit(0)
