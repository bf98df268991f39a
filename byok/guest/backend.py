"""What every guest backend provides: a cheap "can this even start here" check, one-time asset
preparation, and the command that boots one job.

A backend never interprets results: :class:`byok.guest.runner.Guest` hands it the job and result
channels (memfds) and the disks, runs the command it returns under a watchdog, and reads the
result back. So every backend runs the same agent on the same job document.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from byok.guest.job import Disk

Progress = Callable[[str], None]


@dataclass
class Launch:
    """How to start one job: the command, the device each disk appears as, cleanups."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    devices: list[str]            # device path of each disk, in order, as the guest sees it
    job_dev: str
    result_dev: str
    serials: list[str] = field(default_factory=list)  # what the agent checks each device against
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    boots: bool = True            # False: no kernel boots (host backend), no BYOK-BOOTED marker
    link_dir: str | None = None   # where the disks' /dev links go instead (host backend)
    scratch_dirs: list[str] = field(default_factory=list)  # removed by the supervisor, always


class Backend(ABC):
    """One way of getting a kernel with device-mapper to run the guest agent."""

    name: str = ""
    summary: str = ""
    max_disks: int = 14
    #: seconds to wait for the boot marker before the watchdog kills the guest
    boot_timeout: float = 120.0

    @abstractmethod
    def unavailable(self) -> str | None:
        """Why this backend cannot start here without trying (missing package, no /dev/kvm...);
        None if it is worth a boot. Cheap: no network, no boot."""

    def prepare(self, progress: Progress | None = None) -> None:  # noqa: B027 - optional
        """Fetch or build what the backend needs (cached); raises a typed error if it cannot."""

    @abstractmethod
    def launch(self, job_fd: int, result_fd: int, disks: Sequence[Disk], *, mem_mb: int,
               python: str, init_script: Path) -> Launch:
        """The command that runs ``python -m byok.guest.agent JOB RESULT`` on this backend."""

    def versions(self) -> dict[str, str]:
        """Versions of what this backend runs (kernel, emulator), for results and ``doctor``."""
        return {}

    def fix_hint(self) -> str:
        return f"BYOK_GUEST={self.name}"


def env_path() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
