"""One service of the patched Cinder as a process of ``byok cinder up`` (runs in .venv-openstack).

``python cinder_service.py scheduler|volume|backup|manage ARGS...`` runs Cinder's own entry
point (``cinder.cmd.<name>.main``) with ARGS as its command line; ``PYTHONPATH`` puts the
patched tree first, so the series is what runs. byok itself cannot import Cinder (another venv),
so it starts this file with that venv's Python. Two things differ from a packaged deployment,
both because every service here runs as root on one host without sudo or rootwrap:

* privsep runs in-process (no privsep-helper daemons that could outlive their service);
* with ``BYOK_CINDER_LOCK_TRACE=FILE`` every coordination lock Cinder takes (tooz, the real
  locks: ``<source>-delete_volume`` around a clone, the driver's per-volume lock) appends one
  JSON line with how long the acquire waited and how long it was held — how the parallel-clone
  lock wait is measured on Cinder's own locking (instrumentation: the lock itself is unchanged).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

SERVICES = ("scheduler", "volume", "backup", "manage")


def privsep_in_process() -> None:
    import cinder.privsep
    import os_brick.privileged

    for pctxt in (cinder.privsep.sys_admin_pctxt, os_brick.privileged.default):
        pctxt.set_client_mode(False)


class TracedLock:
    """A coordination lock whose acquire/release times go to the trace file."""

    def __init__(self, lock, name: str, trace: str) -> None:
        self._lock, self._name, self._trace = lock, name, trace
        self._acquired = 0.0

    def acquire(self, *args, **kwargs):
        t0 = time.time()
        ok = self._lock.acquire(*args, **kwargs)
        self._acquired = time.time()
        self._waited = self._acquired - t0
        return ok

    def release(self):
        try:
            return self._lock.release()
        finally:
            rec = {"lock": self._name, "waited_s": round(self._waited, 6),
                   "held_s": round(time.time() - self._acquired, 6),
                   "acquired_at": self._acquired, "pid": os.getpid()}
            with open(self._trace, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def __getattr__(self, name):
        return getattr(self._lock, name)


def trace_locks(trace: str) -> None:
    from cinder import coordination

    original = coordination.Coordinator.get_lock

    def get_lock(self, name):
        return TracedLock(original(self, name), name, trace)

    coordination.Coordinator.get_lock = get_lock


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SERVICES:
        print(f"usage: cinder_service.py {{{'|'.join(SERVICES)}}} ARGS...", file=sys.stderr)
        return 2
    name, args = argv[0], argv[1:]
    # Cinder's cmd modules monkey-patch with eventlet on import: that must come first.
    module = importlib.import_module(f"cinder.cmd.{name}")
    if name != "manage":
        privsep_in_process()
        if os.environ.get("BYOK_CINDER_LOCK_TRACE"):
            trace_locks(os.environ["BYOK_CINDER_LOCK_TRACE"])
    sys.argv = [f"cinder-{name}", *args]
    return module.main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
