"""A User-Mode Linux guest with real device-mapper/dm-crypt, as a batch job runner.

This machine's kernel has no device-mapper; Debian's ``user-mode-linux`` kernel does and boots in
about 2 s as an ordinary process. A run:

* boots ``linux.uml`` with the host's ``/`` as a **read-only** hostfs root (the guest runs the
  host's cryptsetup, Python and byok), tmpfs on /run and /tmp, and each volume file as a ubd
  block device (``/dev/ubda``...);
* hands the job (steps + key material) over in an in-memory file (memfd) attached as a read-only
  ubd device — nothing secret touches the disk or any command line — and collects the result
  from a second memfd device;
* loads the dm modules (busybox insmod; the host has no kmod) and runs
  :mod:`byok.guest_agent` as the guest's only program, then powers off;
* streams the console; a step may ``wait`` for the host (``BYOK-WAIT token``), which answers on
  the console's stdin — that is how "revoke while attached" is staged;
* enforces a timeout and kills the whole process group afterwards: no UML helper survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from byok import proc
from byok.errors import GuestError, ToolMissing
from byok.sensitive import Sensitive

UML = "linux.uml"
INIT_SCRIPT = Path(__file__).with_name("guest_init.sh")
MAX_UBD = 16  # UML's ubd driver limit
RESULT_SIZE = 8 << 20


@dataclass
class Disk:
    """A host file the guest sees as a block device; ``link`` is a /dev path created for it."""

    path: Path
    name: str
    writable: bool = True
    link: str | None = None


@dataclass
class GuestRun:
    """What came back: the agent's result document, the console text, timings."""

    result: dict
    console: str
    returncode: int
    seconds: float
    steps: list[dict] = field(default_factory=list)
    session_id: int = 0  # the UML process session: every UML helper process belongs to it

    def step(self, name: str) -> dict:
        for s in self.steps:
            if s.get("name") == name:
                return s
        raise KeyError(name)


def check_available() -> None:
    """ToolMissing naming the package if UML, busybox or the UML modules are missing."""
    proc.which(UML)
    proc.which("busybox")
    if not Path("/usr/lib/uml/modules").is_dir():
        raise ToolMissing(
            "the User-Mode Linux kernel modules are missing",
            hint="apt-get install -y user-mode-linux",
        )


def _channel(data: bytes, size: int | None = None) -> int:
    """A memfd holding ``len(data)`` (8 bytes, big-endian) + data, padded to a 4 KiB multiple."""
    fd = os.memfd_create("byok-guest-channel")
    payload = struct.pack(">Q", len(data)) + data
    total = size or (len(payload) + 4095) // 4096 * 4096
    os.ftruncate(fd, max(total, 4096))
    os.pwrite(fd, payload, 0)
    return fd


def _read_channel(fd: int) -> bytes:
    head = os.pread(fd, 8, 0)
    (n,) = struct.unpack(">Q", head)
    if n == 0 or n > RESULT_SIZE:
        return b""
    return os.pread(fd, n, 8)


class Guest:
    """Boots UML guests to run :mod:`byok.guest_agent` jobs on real dm-crypt."""

    def __init__(self, *, mem_mb: int = 768, timeout: float = 300.0) -> None:
        self.mem_mb = mem_mb
        self.timeout = timeout

    def run(
        self,
        steps: Sequence[dict],
        *,
        disks: Sequence[Disk] = (),
        secrets: dict[str, Sensitive] | None = None,
        on_wait: Callable[[str], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GuestRun:
        """Run ``steps`` in a fresh guest; returns when the guest has powered off."""
        check_available()
        if len(disks) + 2 > MAX_UBD:
            raise GuestError(f"at most {MAX_UBD - 2} volumes per guest run (got {len(disks)})")
        secrets = secrets or {}
        letters = "abcdefghijklmnop"
        job = {
            "steps": list(steps),
            "disks": [
                {"name": d.name, "dev": f"/dev/ubd{letters[i]}", "link": d.link,
                 "writable": d.writable}
                for i, d in enumerate(disks)
            ],
            "secrets": {k: v.reveal().hex() for k, v in secrets.items()},
        }
        job_fd = _channel(json.dumps(job).encode())
        result_fd = _channel(b"", RESULT_SIZE)
        job_dev = f"/dev/ubd{letters[len(disks)]}"
        result_dev = f"/dev/ubd{letters[len(disks) + 1]}"
        umid_dir = Path(tempfile.mkdtemp(prefix="byok-uml-", dir="/dev/shm"))
        argv = [UML, f"mem={self.mem_mb}M"]
        for i, d in enumerate(disks):
            argv.append(f"ubd{i}{'' if d.writable else 'r'}={d.path}")
        argv += [
            f"ubd{len(disks)}r=/proc/self/fd/{job_fd}",
            f"ubd{len(disks) + 1}=/proc/self/fd/{result_fd}",
            "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro", "quiet",
            "con=null", "con0=fd:0,fd:1", f"uml_dir={umid_dir}",
            "init=/bin/sh", "--", str(INIT_SCRIPT), sys.executable, job_dev, result_dev,
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": "/dev/shm"}  # noqa: S108
        lines: list[str] = []
        t0 = time.monotonic()
        p = proc.start(argv, env=env, pass_fds=(job_fd, result_fd), interactive=True)
        os.close(job_fd)  # the child holds its own copy; the secret leaves our process table

        def reader() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                lines.append(line)
                if line.startswith("BYOK-STEP") and progress:
                    progress(line[len("BYOK-STEP ") :])
                if line.startswith("BYOK-WAIT "):
                    token = line.split(" ", 1)[1].strip()
                    try:
                        if on_wait:
                            on_wait(token)
                    finally:
                        with contextlib.suppress(BrokenPipeError, ValueError):
                            assert p.stdin is not None
                            p.stdin.write(b"go\n")
                            p.stdin.flush()

        def drain_stderr() -> None:
            assert p.stderr is not None
            for raw in p.stderr:
                lines.append("stderr: " + raw.decode(errors="replace").rstrip())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        threading.Thread(target=drain_stderr, daemon=True).start()
        try:
            rc = p.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill_group(p)
            p.wait()
            t.join(timeout=5)
            raise GuestError(
                f"the guest did not finish within {self.timeout:g} s and was killed",
                hint="console tail:\n" + "\n".join(lines[-15:]),
            ) from None
        finally:
            proc.kill_group(p)  # UML helpers share the group: none may outlive the run
            shutil.rmtree(umid_dir, ignore_errors=True)
        t.join(timeout=10)
        seconds = time.monotonic() - t0
        raw = _read_channel(result_fd)
        os.close(result_fd)
        console = "\n".join(lines)
        if not raw:
            raise GuestError(
                f"the guest agent returned no result (UML exit status {rc})",
                hint="console tail:\n" + "\n".join(lines[-20:]),
            )
        result = json.loads(raw)
        if "fatal" in result:
            raise GuestError(f"guest agent failed: {result['fatal']}")
        return GuestRun(result, console, rc, seconds, list(result.get("steps", [])),
                        session_id=p.pid)
