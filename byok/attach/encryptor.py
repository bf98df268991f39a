"""os-brick's LUKS encryptors with their one destructive decision guarded.

os-brick formats a device whenever ``luksOpen`` exits 1 and ``isLuks`` fails — on a kernel
without dm, or with a damaged header, that destroys a volume. :class:`GuardedLuksEncryptor`
overrides exactly that decision (``_format_volume``), where os-brick makes it: it refuses with
:class:`~byok.common.errors.FormatRefused` unless this attach was told the volume is new and
blank (which the hook checks on the host before the guest starts).
"""

from __future__ import annotations

from typing import Any

from os_brick.encryptors import luks

from byok.common.errors import FormatRefused


class GuardedLuksEncryptor(luks.LuksEncryptor):
    """os-brick's LUKS1 encryptor that never formats unless ``allow_format``."""

    allow_format = False

    def _format_volume(self, passphrase: str, **kwargs: Any) -> None:
        if not self.allow_format:
            raise FormatRefused(f"os-brick tried to luksFormat {self.dev_path}; byok's guard "
                                "refused (the volume is not a new blank one)")
        super()._format_volume(passphrase, **kwargs)


class GuardedLuks2Encryptor(GuardedLuksEncryptor, luks.Luks2Encryptor):
    """The same guard on os-brick's LUKS2 encryptor (its ``_format_volume`` runs if allowed)."""


GUARDED = {"luks": GuardedLuksEncryptor, "luks2": GuardedLuks2Encryptor}
UNGUARDED = {"luks": luks.LuksEncryptor, "luks2": luks.Luks2Encryptor}


def encryptor(provider: str, *, guard: bool = True, allow_format: bool = False,
              **kwargs: Any) -> Any:
    """An os-brick encryptor for ``provider``; ``guard=False`` is stock os-brick (for the
    experiments that reproduce the auto-format hazard)."""
    cls = (GUARDED if guard else UNGUARDED)[provider]
    enc = cls(**kwargs)
    if guard:
        enc.allow_format = allow_format
    return enc
