"""Volume verbs: a volume service on a scratch pool (every volume released afterwards), the
attach hook, and the lifecycle operations experiments drive directly (rotate, re-encrypt)."""

from __future__ import annotations

import contextlib
from typing import Any

from byok.harness.verbs.base import VerbBase
from byok.keys.resolver import Resolver


class VolumeVerbs(VerbBase):
    def volumes(self, user: str = "alice", *, with_service: bool = True, **kw: Any):
        """A :class:`~byok.lifecycle.volumes.VolumeService` acting for ``user`` (with the
        cinder service identity unless ``with_service=False``) on a scratch pool."""
        from byok.lifecycle.volumes import Pool, VolumeService

        pool = Pool(self.scratch / "pool")
        svc = VolumeService(pool, self.user(user),
                            service=self.user("cinder") if with_service else None,
                            endpoint=self.env.barbican_url, **kw)

        def release_all() -> None:
            for rec in pool.list():
                with contextlib.suppress(Exception):
                    svc.delete(rec.id)

        self.on_cleanup(release_all)
        return svc

    def hook(self, user: str = "alice", *, resolver: Resolver | None = None, **kw: Any):
        """byok's attach hook for ``user`` (resolve, guard, os-brick in the guest). With
        ``resolver``, keys are resolved through it alone (no consumer binding), e.g. through a
        fault-injecting proxy with a short deadline."""
        from byok.attach.hook import AttachHook

        if resolver is not None:
            return AttachHook(resolve=lambda key_ref, _volume_id: resolver.resolve(key_ref), **kw)
        return AttachHook(self.user(user), endpoint=self.env.barbican_url, **kw)

    def rotate(self, svc, volume_id: str, new_key_ref: str, **kw: Any):
        """Keyslot rotation to ``new_key_ref`` (the volume key stays)."""
        from byok.lifecycle import rotation

        return rotation.rotate(svc, volume_id, new_key_ref, **kw)

    def reencrypt(self, svc, volume_id: str, new_key_ref: str, **kw: Any):
        """Full re-encryption under a new volume key; returns (record, seconds)."""
        from byok.lifecycle import rotation

        return rotation.reencrypt(svc, volume_id, new_key_ref, **kw)

    def rotation_pending(self, svc, volume_id: str) -> bool:
        """Is a rotation journal left for ``volume_id`` (an unfinished rotation)?"""
        from byok.lifecycle import rotation

        return rotation.journal_for(svc, volume_id).path.exists()
