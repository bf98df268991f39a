"""An attach session as ``byok attach`` runs it, and the hold protocol behind ``byok detach``.

A session is one guest run: attach, optionally write a pattern, optionally *hold* the mapping
open, optionally read back, detach. While it holds, a record (pid and process start time) sits in
byok's run directory; ``byok detach`` signals exactly that process (SIGUSR1), never a later
process that happens to reuse a pid of a session killed with -9.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byok.attach import hook as hookmod
from byok.common import paths, proc
from byok.common.errors import UsageError


@dataclass(frozen=True)
class Plan:
    """What a session does between attach and detach."""

    write: tuple[int, int] | None = None  # (seed, size) of a pattern written through dm-crypt
    read: int | None = None               # bytes to hash back through dm-crypt
    hold: bool = False                    # keep the mapping open until ``byok detach``


def hold_file(volume: Path) -> Path:
    return paths.base_dir() / "run" / f"attach-{volume.resolve().as_posix().replace('/', '_')}"


def steps_for(v: hookmod.PreparedVolume, plan: Plan) -> list[dict]:
    steps = [hookmod.attach_step(v, name="attach")]
    if plan.write:
        steps.append(hookmod.write_step(v, plan.write[0], plan.write[1], name="write"))
    if plan.hold:
        steps.append(hookmod.wait_step("detach"))
    if plan.read:
        steps.append(hookmod.read_step(v, plan.read, name="read"))
    steps.append(hookmod.detach_step(v, name="detach"))
    return steps


def run(hook: hookmod.AttachHook, v: hookmod.PreparedVolume, plan: Plan, volume: Path, *,
        on_hold: Callable[[], None] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the session; returns a summary (state, mapper, timings, sha256s).

    :raises ByokError: the typed error of the first failed step (WrongKey, NotLuks...).
    """
    release = threading.Event()
    record = hold_file(volume)

    def on_wait(_token: str) -> None:
        record.parent.mkdir(parents=True, exist_ok=True)
        paths.write_atomic(record, json.dumps({
            "pid": os.getpid(), "start_time": proc.pid_start_time(os.getpid()),
            "volume": str(volume.resolve())}))
        if on_hold:
            on_hold()
        release.wait()

    old = signal.signal(signal.SIGUSR1, lambda *_: release.set())
    try:
        run_ = hook.run([v], steps_for(v, plan), on_wait=on_wait, progress=progress)
    finally:
        signal.signal(signal.SIGUSR1, old)
        record.unlink(missing_ok=True)
    hookmod.raise_for(run_, {v.volume_id: v.path})
    summary: dict[str, Any] = {
        "volume": str(volume), "state": v.state, "key": v.key.ref.secret_id,
        "mapper": run_.step("attach")["mapper"], "backend": run_.backend,
        "guest_seconds": round(run_.seconds, 2),
        "steps": {s["name"]: round(s["seconds"], 3) for s in run_.steps},
    }
    for name in ("write", "read"):
        if any(s["name"] == name for s in run_.steps):
            summary[f"{name}_sha256"] = run_.step(name)["sha256"]
    return summary


def request_detach(volume: Path) -> int:
    """Ask the session holding ``volume`` to detach; returns its pid.

    :raises UsageError: no session holds it, or the one that did is gone (record removed).
    """
    record = hold_file(volume)
    try:
        rec = json.loads(record.read_text())
        pid, started = int(rec["pid"]), rec["start_time"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise UsageError(f"{volume} is not attached by a 'byok attach --hold' session") from None
    if started is None or proc.pid_start_time(pid) != started:
        record.unlink(missing_ok=True)
        raise UsageError(f"the session holding {volume} is gone (stale record removed)")
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        record.unlink(missing_ok=True)
        raise UsageError(f"the session holding {volume} is gone (stale record removed)") from None
    return pid
