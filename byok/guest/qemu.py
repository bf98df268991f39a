"""QEMU backends: Debian's own kernel in a full virtual machine, under KVM or TCG.

* ``qemu-kvm``: hardware-assisted; fastest where it really works. A present, openable
  ``/dev/kvm`` is not a working one (nested/PVM hosts fail with "KVM internal error" or a
  rejected MSR), so only a boot probe decides.
* ``qemu-tcg``: pure emulation; works on any x86 host, ~3x slower to boot than UML and
  ~30 MiB/s through dm-crypt (``-cpu max`` gives the guest AES-NI).

Volumes are virtio-blk disks at fixed PCI slots with serial numbers the agent checks before it
touches a device; the host's ``/`` is the root over 9p, read-only. A :class:`~byok.guest.job.Disk`
with ``native_luks`` is attached the way Nova's libvirt driver attaches a LUKS1 volume: QEMU's
``luks`` block driver with a ``secret`` object (read from a memfd), so the guest sees plaintext.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from byok.common import proc
from byok.common.errors import GuestError
from byok.guest import kernel
from byok.guest.backend import Backend, Launch, Progress, env_path
from byok.guest.job import Disk, secret_blob

QEMU = "qemu-system-x86_64"
FIRST_SLOT = 5  # PCI slots below are the machine's own (host bridge, ISA, IDE, VGA off, 9p)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def kvm_modules(sys_module: Path = Path("/sys/module")) -> list[str]:
    """Loaded or built-in KVM modules (/proc/modules is absent on some kernels)."""
    try:
        return sorted(p.name for p in sys_module.iterdir() if p.name.startswith("kvm"))
    except OSError:
        return []


class QemuBackend(Backend):
    accel = "tcg"
    cpu = "max"
    max_disks = 20

    def unavailable(self) -> str | None:
        if shutil.which(QEMU) is None:
            return f"{QEMU} is not installed — fix: apt-get install -y qemu-system-x86"
        if shutil.which("busybox") is None:
            return "busybox is missing (the initramfs) — fix: apt-get install -y busybox-static"
        return None

    def prepare(self, progress: Progress | None = None) -> None:
        kernel.prepare(progress)

    def versions(self) -> dict[str, str]:
        out = {"qemu": qemu_version()}
        a = kernel.cached()
        out["kernel"] = f"Debian {a.release} ({a.package_version})" if a else "not built yet"
        return out

    def launch(self, job_fd: int, result_fd: int, disks: Sequence[Disk], *, mem_mb: int,
               python: str, init_script: Path) -> Launch:
        assets = kernel.cached()
        if assets is None:
            raise GuestError(f"{self.name}: the guest kernel is not built (run byok guest prepare)")
        for value in (python, str(init_script)):
            if re.search(r"\s", value):
                raise GuestError(f"{self.name}: the path {value!r} contains white space, which "
                                 "the kernel command line cannot carry")
        n = len(disks)
        letters = [LETTERS[i] for i in range(n + 2)]
        job_dev, result_dev = f"/dev/vd{letters[n]}", f"/dev/vd{letters[n + 1]}"
        append = " ".join([
            "console=ttyS0", "quiet", "loglevel=3", "panic=-1", "8250.nr_uarts=1",
            f"byok.init={init_script}", f"byok.py={python}",
            f"byok.job={job_dev}", f"byok.result={result_dev}",
        ])
        argv = [
            QEMU, "-accel", self.accel, "-M", "pc", "-cpu", self.cpu, "-m", str(mem_mb),
            "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(assets.vmlinux), "-initrd", str(assets.initramfs), "-append", append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=0x4",
        ]
        fds = [job_fd, result_fd]
        serials = []
        for i, d in enumerate(disks):
            serial = f"byok-d{i}"
            serials.append(serial)
            node = f"d{i}"
            ro = "on" if not d.writable else "off"
            if d.native_luks is not None:
                sfd = secret_blob(d.native_luks)
                fds.append(sfd)
                argv += [
                    "-object", f"secret,id=sec{i},file=/proc/self/fd/{sfd},format=raw",
                    "-blockdev", f"driver=file,node-name=f{i},filename={d.path},read-only={ro}",
                    "-blockdev", f"driver=luks,node-name={node},file=f{i},key-secret=sec{i},"
                                 f"read-only={ro}",
                ]
            else:
                argv += ["-blockdev", f"driver=file,node-name=f{i},filename={d.path},"
                                      f"read-only={ro}",
                         "-blockdev", f"driver=raw,node-name={node},file=f{i},read-only={ro}"]
            argv += ["-device", f"virtio-blk-pci,drive={node},serial={serial},"
                                f"addr={hex(FIRST_SLOT + i)}"]
        for j, (fd, ro) in enumerate(((job_fd, "on"), (result_fd, "off"))):
            node = f"c{j}"
            argv += ["-blockdev", f"driver=file,node-name=cf{j},filename=/proc/self/fd/{fd},"
                                  f"read-only={ro},locking=off",
                     "-blockdev", f"driver=raw,node-name={node},file=cf{j},read-only={ro}",
                     "-device", f"virtio-blk-pci,drive={node},serial=byok-c{j},"
                                f"addr={hex(FIRST_SLOT + n + j)}"]
        closers = [fd for fd in fds if fd not in (job_fd, result_fd)]

        def close_secrets() -> None:
            for fd in closers:
                os.close(fd)

        return Launch(argv, env_path(), tuple(fds), [f"/dev/vd{c}" for c in letters[:n]],
                      job_dev, result_dev, serials=[*serials, "byok-c0", "byok-c1"],
                      cleanup=[close_secrets])


class QemuTcgBackend(QemuBackend):
    name = "qemu-tcg"
    summary = "QEMU with TCG (software emulation) and Debian's kernel: works on any x86 host"
    accel = "tcg"
    cpu = "max"
    boot_timeout = 180.0


class QemuKvmBackend(QemuBackend):
    name = "qemu-kvm"
    summary = "QEMU with KVM and Debian's kernel: fastest where KVM really runs a guest"
    accel = "kvm"
    cpu = "host"
    boot_timeout = 45.0

    def unavailable(self) -> str | None:
        base = super().unavailable()
        if base:
            return base
        if not os.path.exists("/dev/kvm"):
            return "no /dev/kvm (the KVM module is not loaded, or this is a VM without nesting)"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "/dev/kvm exists but is not usable by this user — fix: add the user to group kvm"
        return None


def qemu_version() -> str:
    try:
        r = proc.run([QEMU, "--version"], timeout=20, check=False)
    except Exception:
        return "not installed"
    first = r.out.splitlines()[0] if r.out else ""
    m = re.search(r"version (\S+)", first)
    return m.group(1) if m else first.strip()
