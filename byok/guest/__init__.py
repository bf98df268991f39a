"""Real-kernel guests for real dm-crypt: one job in, one result out, on whichever backend really
works on this host (host device-mapper, QEMU/KVM, User-Mode Linux, a newer UML, QEMU TCG).

``Guest().run(steps, disks=..., secrets=...)`` runs :mod:`byok.guest.agent` on the backend that
``BYOK_GUEST`` names, or that the probe picked (:mod:`byok.guest.select`); ``byok doctor``
shows every backend's verdict and why.
"""

from byok.guest.job import Disk, GuestRun
from byok.guest.runner import Guest

__all__ = ["Disk", "Guest", "GuestRun", "check_available"]


def check_available() -> None:
    """GuestError naming every backend's reason if none can run dm-crypt here (probes once)."""
    from byok.guest.select import pick

    pick()
