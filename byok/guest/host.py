"""The ``host`` backend: this machine's own kernel has device-mapper (a Vagrant VM, a devstack
node), so no guest boots — the agent runs as a child process, volumes are loop devices.

The /dev links os-brick replaces with its mapping are made in a private scratch directory, not
under the host's /dev/disk, so a run leaves nothing behind on the host; the loop devices are
detached afterwards whatever happened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from byok.common import proc
from byok.common.errors import GuestError
from byok.guest.backend import Backend, Launch, env_path
from byok.guest.job import Disk


def device_mapper_problem(control: str = "/dev/mapper/control") -> str | None:
    """Why the running kernel cannot do device-mapper, or None. A /dev/mapper/control node can
    exist (devtmpfs, a container's /dev) while the driver is absent: only opening it tells."""
    try:
        fd = os.open(control, os.O_RDWR)
    except FileNotFoundError:
        return f"no {control}: dm_mod is not loaded or not built"
    except OSError as e:
        return f"{control} exists but the kernel answers: {e.strerror}"
    os.close(fd)
    return None


class HostBackend(Backend):
    name = "host"
    summary = "this machine's own kernel (it has device-mapper): no guest, loop devices"
    boot_timeout = 30.0

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (cryptsetup open and losetup)"
        problem = device_mapper_problem()
        if problem:
            return f"the host kernel has no device-mapper ({problem})"
        for tool in ("losetup", "cryptsetup"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                return f"{tool} is not installed"
        return None

    def versions(self) -> dict[str, str]:
        return {"kernel": f"host {os.uname().release}"}

    def launch(self, job_fd: int, result_fd: int, disks: Sequence[Disk], *, mem_mb: int,
               python: str, init_script: Path) -> Launch:
        if any(d.native_luks is not None for d in disks):
            raise GuestError("host: QEMU's native LUKS attach needs a QEMU backend")
        scratch = Path(tempfile.mkdtemp(prefix="byok-host-"))
        loops: list[str] = []

        def cleanup() -> None:
            for dev in loops:
                proc.run(["losetup", "-d", dev], check=False, timeout=60)
            shutil.rmtree(scratch, ignore_errors=True)

        try:
            for d in disks:
                flags = [] if d.writable else ["--read-only"]
                attach = ["losetup", "--find", "--show", *flags, str(d.path)]
                loops.append(proc.run(attach, timeout=60, what="losetup").out.strip())
        except BaseException:
            cleanup()
            raise
        argv = [python, "-m", "byok.guest.agent", f"/proc/self/fd/{job_fd}",
                f"/proc/self/fd/{result_fd}"]
        return Launch(argv, env_path() | {"TMPDIR": str(scratch)}, (job_fd, result_fd),
                      list(loops), f"/proc/self/fd/{job_fd}", f"/proc/self/fd/{result_fd}",
                      cleanup=[cleanup], boots=False, link_dir=str(scratch / "by-id"))
