"""What ``byok attach TARGET`` opens: a pool volume by id (its key and state from the record)
or a volume image file with an explicit key reference. The pool learns when the hook formatted a
new blank volume, so the record says "available" from then on."""

from __future__ import annotations

from pathlib import Path

from byok.attach.hook import AttachHook, PreparedVolume, connection_info_for
from byok.common.errors import UsageError
from byok.keys.identity import Identity


def prepare(user: Identity, target: Path, *, key_ref: str | None, provider: str = "luks2",
            new: bool = False, pool: Path | None = None) -> tuple[AttachHook, PreparedVolume]:
    """The hook and the prepared (resolved, guarded, key-checked) volume for ``target``.

    :raises UsageError: a file target without ``key_ref``.
    """
    from byok.lifecycle.volumes import Pool, VolumeService

    hook = AttachHook(user)
    if target.exists():
        if not key_ref:
            raise UsageError("give --key-ref (the user's key reference)")
        conn = connection_info_for(target.resolve())
        return hook, hook.prepare(conn, {"key_ref": key_ref, "provider": provider},
                                  new_volume=new)
    svc = VolumeService(Pool(pool), user)
    conn, enc, blank = svc.attach_args(str(target), key_ref)
    v = hook.prepare(conn, enc, new_volume=new or blank)
    if v.state == "formatted":
        svc.mark_formatted(v.volume_id)
    return hook, v
