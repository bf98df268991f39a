"""The one exception tree of byok.

Every failure a user can meet is a subclass of :class:`ByokError` with a message that says what
happened and, where there is one, what to do about it (``hint``). The CLI maps ``exit_code`` to
the process exit status, so scripts can tell "wrong key" from "Barbican is down" without parsing
text. Messages never contain key material: callers pass references and fingerprints, not bytes.
"""

from __future__ import annotations


class ByokError(Exception):
    """Base of all byok errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(ByokError):
    """The command line or an argument does not make sense."""

    exit_code = 2


# --- the key path ----------------------------------------------------------------------------


class KeyRefInvalid(ByokError):
    """A key reference is malformed or points somewhere it must not."""

    exit_code = 3


class KeyNotFound(ByokError):
    """The key manager says the secret does not exist (or is invisible to this identity)."""

    exit_code = 4


class KeyAccessDenied(ByokError):
    """The identity may not read (or use) this secret."""

    exit_code = 5


class KeyServiceUnavailable(ByokError):
    """Keystone or Barbican did not answer usefully within the deadline."""

    exit_code = 6


class KeyTypeMismatch(ByokError):
    """The secret exists but is not usable as a volume key (type, algorithm, size, expiry)."""

    exit_code = 7


class IdentityError(ByokError):
    """An identity could not be built (unknown cloud, missing credentials)."""

    exit_code = 2


# --- the LUKS layer --------------------------------------------------------------------------


class WrongKey(ByokError):
    """No keyslot of the LUKS header opens with this passphrase."""

    exit_code = 5


class NotLuks(ByokError):
    """The device carries no LUKS header (and is not marked as new and blank)."""

    exit_code = 8


class HeaderCorrupt(ByokError):
    """The device looks like it held LUKS but the header cannot be parsed or verified."""

    exit_code = 8


class DeviceMapperUnavailable(ByokError):
    """The kernel that ran the command has no device-mapper (dm-crypt)."""

    exit_code = 9


class GuestError(ByokError):
    """The User-Mode Linux guest failed to boot, timed out or reported an error."""

    exit_code = 10


class CommandFailed(ByokError):
    """An external command exited with an unexpected status."""

    exit_code = 13

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(CommandFailed):
    """An external command did not finish within its timeout and was killed."""


class ToolMissing(ByokError):
    """A program byok needs is not installed; the hint names the Debian package."""

    exit_code = 12


# --- the embedded stack ----------------------------------------------------------------------


class StackError(ByokError):
    """The embedded Keystone/Barbican could not be configured, started or stopped."""

    exit_code = 11


class PortInUse(StackError):
    """A port the stack wants is taken by another process."""


# --- volumes, rotation, recovery -------------------------------------------------------------


class VolumeError(ByokError):
    """A volume operation failed; the volume is left as it was."""

    exit_code = 14


class VolumeNotFound(VolumeError):
    """No volume with that id in the pool."""


class VolumeBusy(VolumeError):
    """Another operation holds the volume (for example a rotation in progress)."""


class RotationError(VolumeError):
    """A rotation could not complete; the journal says what state the volume is in."""


class RecoveryError(ByokError):
    """Offline recovery could not produce the plaintext."""

    exit_code = 15


class RecoveryRefused(RecoveryError):
    """Recovery would have to answer with bytes it cannot vouch for: it names the byte ranges
    of the plaintext device and why, and writes nothing."""

    def __init__(self, message: str, *, ranges: list[tuple[int, int, str]] | None = None,
                 state: dict | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.ranges = ranges or []
        self.state = state or {}

    @classmethod
    def from_ranges(cls, ranges: list[tuple[int, int, str]], *, state: dict | None = None
                    ) -> RecoveryRefused:
        total = sum(b - a for a, b, _ in ranges)
        shown = "; ".join(f"bytes {a}-{b - 1}: {why}" for a, b, why in ranges[:3])
        more = f" (and {len(ranges) - 3} more ranges)" if len(ranges) > 3 else ""
        return cls(f"refusing to recover: {total} bytes cannot be vouched for — {shown}{more}; "
                   "nothing was written", ranges=ranges, state=state,
                   hint="keep the image as it is; 'byok recover --check --json' lists every "
                   "range")


class ExperimentError(ByokError):
    """The research harness could not run or report an experiment."""

    exit_code = 16
