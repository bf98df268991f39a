"""Guest verbs: the attach-run step builders (os-brick in the guest kernel, on real dm-crypt),
Nova's native path read by a real QEMU, and N parallel opens on real dm-crypt."""

from __future__ import annotations

from pathlib import Path

from byok.attach import hook as attach
from byok.common.sensitive import Sensitive
from byok.harness.verbs.base import VerbBase


class GuestVerbs(VerbBase):
    # Steps of one guest session, run by ``ctx.hook().run(volumes, steps)``.
    attach_step = staticmethod(attach.attach_step)
    detach_step = staticmethod(attach.detach_step)
    write_step = staticmethod(attach.write_step)
    read_step = staticmethod(attach.read_step)
    wait_step = staticmethod(attach.wait_step)

    def qemu_backend(self) -> str | None:
        """The QEMU guest backend usable here for Nova's native path (None if none is)."""
        from byok.guest import native

        return native.qemu_backend()

    def qemu_guest_sha256(self, path: Path, passphrase: Sensitive, size: int) -> str:
        """SHA-256 of the first ``size`` plaintext bytes as a QEMU guest reads the volume
        attached through QEMU's ``luks`` block driver (WrongKey if it does not open)."""
        from byok.guest import native

        return native.native_sha256(path, passphrase, size)[0]

    def guest_parallel_open(self, image: Path, count: int, slice_size: int,
                            passphrase: Sensitive, *, prefix: str = "mk") -> dict:
        """Cut ``image`` into ``count`` dm-linear slices of ``slice_size`` bytes (each a LUKS
        volume) and ``luksOpen`` them all at once in the guest; returns that step's record
        (ok, failures, wall_seconds, peak_used_kib)."""
        from byok.guest import Disk, Guest

        run = Guest().run([
            {"op": "dm_slices", "disk": "multi", "count": count, "size": slice_size,
             "prefix": prefix, "name": "slices"},
            {"op": "parallel_open", "key": "pw",
             "devices": [f"/dev/mapper/{prefix}{i}" for i in range(count)], "name": "parallel"},
        ], disks=[Disk(image, "multi")], secrets={"pw": passphrase})
        return run.step("parallel")
