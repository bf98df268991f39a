"""Nova's native LUKS path on a real VM: QEMU's ``luks`` block driver, not dm-crypt.

For LUKS1 volumes Nova's libvirt driver does not open dm-crypt on the compute host: it stores the
passphrase (hex of the key, os-brick's rule) in a libvirt secret and QEMU decrypts in its block
layer. Here a QEMU guest gets the volume that way and hashes what its kernel sees, so the claim
"Nova's native path reads what dm-crypt wrote" is shown by a running QEMU, not by qemu-img alone.
"""

from __future__ import annotations

from pathlib import Path

from byok.common.errors import GuestError
from byok.common.sensitive import Sensitive
from byok.guest import select
from byok.guest.job import Disk
from byok.guest.runner import Guest

QEMU_BACKENDS = ("qemu-kvm", "qemu-tcg")


def qemu_backend() -> str | None:
    """The fastest QEMU backend whose probe passed on this host (None if neither)."""
    forced = select.choice()
    if forced in QEMU_BACKENDS:
        return forced
    return next((n for n in QEMU_BACKENDS if select.verdict(n).usable), None)


def native_sha256(path: Path, passphrase: Sensitive, size: int) -> tuple[str, str]:
    """(sha256 of the first ``size`` plaintext bytes as the QEMU guest reads them, backend).

    :raises WrongKey: QEMU's driver opens no keyslot with ``passphrase``.
    :raises GuestError: no QEMU backend works here.
    """
    name = qemu_backend()
    if name is None:
        raise GuestError("no QEMU backend is usable on this host (byok doctor says why)")
    run = Guest(backend=select.backend(name), mem_mb=256).run(
        [{"op": "sha256", "disk": "native", "size": size, "name": "read"}],
        disks=[Disk(path, "native", writable=False, native_luks=passphrase)])
    step = run.step("read")
    if not step.get("ok"):
        raise GuestError(f"guest ({name}): reading the natively attached volume failed: "
                         f"{step.get('message') or step.get('detail')}")
    return step["sha256"], name
