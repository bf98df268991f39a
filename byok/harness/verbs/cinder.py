"""Cinder verbs: the patched Cinder of ``byok cinder up`` through its REST API, as the Cinder
variants of the experiments (``E03-cinder``...) drive it — a user's API client, resources that
are deleted when the experiment ends, what Nova does with Cinder's answer, and QEMU's own tools
on the volume files the local driver writes. The glue lives in :mod:`byok.harness.cinder`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from byok.common.sensitive import Sensitive
from byok.harness import cinder as hc
from byok.harness.verbs.base import VerbBase


class CinderVerbs(VerbBase):
    def cinder(self, user: str = "alice") -> Any:
        """``user``'s client of the Cinder API at microversion 3.72 (``create_volume``,
        ``create_backup``, ``restore_backup``, ``wait``, ``delete_and_wait``, ``raw``...)."""
        return hc.api(self.env, user)

    def cinder_make(self, api: Any, kind: str, create: Callable[[], dict], *,
                    want: str = "available") -> dict:
        """``create()`` (Cinder's answer), deleted after the experiment; waits for ``want``."""
        return hc.make(self, api, kind, create, want=want)

    def cinder_track(self, api: Any, kind: str, rid: str) -> str:
        """Delete the ``kind`` resource ``rid`` after the experiment if it still exists."""
        return hc.track(self, api, kind, rid)

    def cinder_volume_file(self, api: Any, volume_id: str) -> tuple[Path, str]:
        """(file, format) of a volume, as its connection_info names it."""
        return hc.volume_file(self.env, api, volume_id)

    def cinder_attach_like_nova(self, api: Any, volume_id: str) -> tuple[dict, dict, dict]:
        """An attachment with a compute connector: (attachment, connection_info, encryption)."""
        return hc.attach_like_nova(api, volume_id)

    def cinder_passphrase_like_nova(self, encryption: dict, volume_id: str, *,
                                    user: str = "alice") -> Sensitive:
        """The volume's passphrase fetched as the castellan backend fetches it for Nova."""
        return hc.passphrase_like_nova(self.user(user), encryption, volume_id,
                                       self.env.barbican_url)

    def cinder_lock_waits(self, name: str, since: float, until: float) -> list[dict]:
        """The volume service's trace of Cinder's coordination lock ``name`` (acquired between
        ``since`` and ``until``, epoch): ``waited_s`` and ``held_s`` per acquisition."""
        return hc.lock_waits(hc.services(self.env).lock_trace, name, since, until)

    def qemu_write_volume(self, path: Path, passphrase: Sensitive, data: Path, *,
                          fmt: str = "qcow2") -> bool:
        """Write ``data`` at offset 0 of an encrypted volume file as QEMU writes it."""
        return hc.qemu_write(path, passphrase, data, fmt=fmt)

    def qemu_volume_sha256(self, path: Path, passphrase: Sensitive, size: int, *,
                           fmt: str = "qcow2") -> str | None:
        """sha256 of the first ``size`` plaintext bytes through QEMU (qcow2+LUKS or raw LUKS),
        or None when ``passphrase`` does not open it."""
        out = self.scratch / "qemu-volume.out"
        return hc.qemu_sha256(path, passphrase, size, out, fmt=fmt)
