"""Runs on the guest's kernel (as its only program): executes a job's steps on real dm-crypt.

Invoked by ``init.sh`` (or directly, by the host backend) as ``python -m byok.guest.agent JOB
RESULT``. The job (steps, disks, key material) is read from a block device backed by a host
memfd; the result is written to another. Before it touches a device whose serial number the
backend set (QEMU), the agent checks it, so a reordered bus can never make it write the wrong
volume. Steps run in order; each records ``ok``, timing and its outputs; a failing
step records the error (type, message, exit code) and, unless ``continue_on_error``, ends the
job. Nothing here talks to Keystone or Barbican.

Step ops: those a job's ``op_modules`` add (the attach layer's os-brick steps,
:mod:`byok.attach.guest_ops`), ``cryptsetup_open``/``cryptsetup_close`` (bare cryptsetup,
for comparison),
``write``/``sha256`` (deterministic patterns through a device), ``wait`` (pause until the host
answers), ``parallel_open`` (N concurrent opens with a memory sampler), ``dm_slices`` (carve one
disk into linear dm devices), ``meminfo``, ``shell``, ``run`` (a command naming disks and keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import struct
import sys
import threading
import time
import traceback
from typing import Any

from byok.common import proc
from byok.common.pattern import pattern_chunks
from byok.common.sensitive import Sensitive

MAPPER = "/dev/mapper"


def _read_job(dev: str) -> dict:
    with open(dev, "rb") as f:
        (n,) = struct.unpack(">Q", f.read(8))
        return json.loads(f.read(n))


def _write_result(dev: str, doc: dict) -> None:
    data = json.dumps(doc).encode()
    with open(dev, "r+b", buffering=0) as f:
        f.write(struct.pack(">Q", len(data)) + data)
        os.fsync(f.fileno())


def _drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def check_serial(dev: str, want: str | None) -> None:
    """Refuse a device whose serial is not the one the host gave it (virtio-blk sets it)."""
    if not want:
        return
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/serial") as f:
            have = f.read().strip()
    except OSError:
        have = "(none)"
    if have != want:
        raise RuntimeError(f"{dev} has serial {have!r}, expected {want!r}: wrong device order")


class Agent:
    def __init__(self, job: dict) -> None:
        self.job = job
        self.secrets = {k: bytes.fromhex(v) for k, v in job.get("secrets", {}).items()}
        self.disks = {d["name"]: d for d in job.get("disks", [])}
        self.encryptors: dict[str, Any] = {}
        self.ops: dict[str, Any] = {}
        for name in job.get("op_modules", []):  # ops a higher layer adds (os-brick's attach)
            self.ops.update(importlib.import_module(name).OPS)
        for d in self.disks.values():
            check_serial(d["dev"], d.get("serial"))
            self._connect(d)

    @staticmethod
    def _connect(disk: dict) -> None:
        """Point the volume's /dev link at its block device, as os-brick's connector does on
        every connect (the encryptor re-points it at /dev/mapper on attach)."""
        if disk.get("link"):
            os.makedirs(os.path.dirname(disk["link"]), exist_ok=True)
            if os.path.lexists(disk["link"]):
                os.unlink(disk["link"])
            os.symlink(disk["dev"], disk["link"])

    # -- helpers -------------------------------------------------------------------------------
    def _path(self, step: dict) -> str:
        if "path" in step:
            return step["path"]
        if "mapper" in step:
            return f"{MAPPER}/{step['mapper']}"
        return self.disks[step["disk"]]["dev"]

    # -- ops -----------------------------------------------------------------------------------
    def op_cryptsetup_open(self, step: dict) -> dict:
        mapping = step.get("mapping", step["name"])
        r = proc.run(["cryptsetup", "luksOpen", "--key-file=-", self._path(step), mapping],
                     input=Sensitive(self.secrets[step["key"]]), check=False, timeout=600)
        if r.returncode:
            raise RuntimeError(json.dumps({"exit_code": r.returncode, "stderr": r.err[-300:]}))
        return {"mapper": f"{MAPPER}/{mapping}"}

    def op_cryptsetup_close(self, step: dict) -> dict:
        proc.run(["cryptsetup", "close", step.get("mapping", step["name"])], timeout=120)
        return {}

    def op_write(self, step: dict) -> dict:
        h = hashlib.sha256()
        fd = os.open(self._path(step), os.O_WRONLY)
        try:
            os.lseek(fd, step.get("offset", 0), os.SEEK_SET)
            for chunk in pattern_chunks(step["seed"], step["size"]):
                h.update(chunk)
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return {"sha256": h.hexdigest(), "bytes": step["size"]}

    def op_sha256(self, step: dict) -> dict:
        _drop_caches()
        h = hashlib.sha256()
        left = step["size"]
        with open(self._path(step), "rb", buffering=0) as f:
            f.seek(step.get("offset", 0))
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
        return {"sha256": h.hexdigest(), "bytes": step["size"] - left}

    def op_wait(self, step: dict) -> dict:
        print(f"BYOK-WAIT {step['token']}", flush=True)
        answer = sys.stdin.readline().strip()
        return {"answer": answer}

    def op_meminfo(self, step: dict) -> dict:
        return meminfo()

    def op_dm_slices(self, step: dict) -> dict:
        dev = self._path(step)
        sectors = step["size"] // 512
        names = []
        for i in range(step["count"]):
            name = f"{step.get('prefix', 'slice')}{i}"
            table = f"0 {sectors} linear {dev} {i * sectors}"
            proc.run(["dmsetup", "create", name, "--table", table], timeout=60)
            names.append(name)
        # No udev in the guest: ask dmsetup to create the /dev/mapper nodes itself.
        proc.run(["dmsetup", "mknodes"], timeout=60)
        return {"slices": names}

    def op_parallel_open(self, step: dict) -> dict:
        """Open N devices concurrently with the same key; sample memory every 20 ms."""
        key = self.secrets[step["key"]]
        devices = step["devices"]
        base = meminfo()
        used_peak = [0]
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                m = meminfo()
                used = base["MemAvailable"] - m["MemAvailable"]
                used_peak[0] = max(used_peak[0], used)
                time.sleep(0.02)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        t0 = time.monotonic()
        procs = []
        for i, dev in enumerate(devices):
            p = proc.start(["cryptsetup", "luksOpen", "--key-file=-", dev, f"par{i}"],
                           input=Sensitive(key))
            procs.append((p, time.monotonic()))
        latencies, failures = [], []
        for i, (p, started) in enumerate(procs):
            assert p.stderr is not None
            err = p.stderr.read()
            p.wait(timeout=900)
            latencies.append(time.monotonic() - started)
            if p.returncode:
                failures.append({"i": i, "exit_code": p.returncode,
                                 "stderr": err.decode()[-200:]})
        wall = time.monotonic() - t0
        stop.set()
        th.join()
        for i, (p, _) in enumerate(procs):
            if p.returncode == 0:
                proc.run(["cryptsetup", "close", f"par{i}"], check=False, timeout=120)
        return {
            "n": len(devices),
            "latencies": latencies,
            "wall_seconds": wall,
            "failures": failures,
            "peak_used_kib": used_peak[0],
            "mem_total_kib": base["MemTotal"],
        }

    def op_run(self, step: dict) -> dict:
        """A command with ``{disk:NAME}`` replaced by that disk's device and ``{key:NAME}`` by a
        memfd holding that key (never a file); ``stdin`` names a key fed on stdin."""
        with contextlib.ExitStack() as es:
            fds: list[int] = []

            def expand(arg: str) -> str:
                for kind, name in re.findall(r"\{(disk|key):([^}]+)\}", arg):
                    if kind == "disk":
                        value = self.disks[name]["dev"]
                    else:
                        fd, value = es.enter_context(
                            proc.secret_fd(Sensitive(self.secrets[name]), "byok-key"))
                        fds.append(fd)
                    arg = arg.replace(f"{{{kind}:{name}}}", value)
                return arg

            argv = [expand(a) for a in step["argv"]]
            stdin = Sensitive(self.secrets[step["stdin"]]) if step.get("stdin") else None
            r = proc.run(argv, input=stdin, check=False, timeout=step.get("timeout", 300),
                         pass_fds=fds)
        return {"exit_code": r.returncode, "stdout": r.out[-2000:], "stderr": r.err[-2000:]}

    def op_shell(self, step: dict) -> dict:
        r = proc.run(step["argv"], check=False, timeout=step.get("timeout", 300))
        return {"exit_code": r.returncode, "stdout": r.out[-2000:], "stderr": r.err[-2000:]}

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        results = []
        for i, step in enumerate(self.job.get("steps", [])):
            op = step["op"]
            name = step.get("name", f"{i}:{op}")
            print(f"BYOK-STEP {name}", flush=True)
            t0 = time.monotonic()
            rec: dict[str, Any] = {"name": name, "op": op}
            try:
                fn = self.ops.get(op)
                rec.update(fn(self, step) if fn else getattr(self, f"op_{op}")(step))
                rec["ok"] = True
            except Exception as e:  # recorded for the host, which maps it to typed errors
                rec["ok"] = False
                rec["error"] = type(e).__name__
                msg = str(e)
                try:
                    rec["detail"] = json.loads(msg)
                except ValueError:
                    rec["message"] = msg[-500:]
            rec["seconds"] = time.monotonic() - t0
            results.append(rec)
            if not rec["ok"] and not step.get("continue_on_error", False):
                break
        # Leave nothing open: close whatever an aborted job attached.
        for disk, enc in list(self.encryptors.items()):
            try:
                enc.detach_volume()
            except Exception:  # noqa: S110 - best effort at shutdown, the guest powers off next
                pass
            self.encryptors.pop(disk, None)
        return {"steps": results, "uname": os.uname().release}


def main(argv: list[str]) -> int:
    job_dev, result_dev = argv[1], argv[2]
    try:
        job = _read_job(job_dev)
        for dev, serial in job.get("channels", {}).items():
            check_serial(dev, serial)
        doc = Agent(job).run()
    except Exception:
        doc = {"fatal": traceback.format_exc()[-2000:]}
    _write_result(result_dev, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
