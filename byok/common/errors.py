"""The one exception tree of byok, and the one table of exit codes.

Every failure a user can meet is a subclass of :class:`ByokError` with a message that says what
happened and, where there is one, what to do about it (``hint``). The CLI exits with the error's
``exit_code``; every kind of failure has its own code (:func:`exit_codes` is the table the README
prints), so scripts can tell "wrong key" from "access denied" from "Barbican is down" without
parsing text. The intermediate bases (:class:`KeyPathError`, :class:`LuksError`...) group kinds
for ``except`` clauses and are never raised themselves. Messages never contain key material:
callers pass references and fingerprints, not bytes.
"""

from __future__ import annotations


class ByokError(Exception):
    """Base of all byok errors (exit 1 means a bug: every raise uses a subclass)."""

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


class KeyPathError(ByokError):
    """Base: resolving a user's key (identity, reference, Barbican)."""


class IdentityError(KeyPathError):
    """An identity could not be built (unknown cloud, missing or refused credentials)."""

    exit_code = 17


class KeyRefInvalid(KeyPathError):
    """A key reference is malformed or points somewhere it must not."""

    exit_code = 3


class KeyNotFound(KeyPathError):
    """The key manager says the secret does not exist (or is invisible to this identity)."""

    exit_code = 4


class KeyAccessDenied(KeyPathError):
    """The identity may not read (or use) this secret."""

    exit_code = 5


class KeyServiceUnavailable(KeyPathError):
    """Keystone or Barbican did not answer usefully within the deadline."""

    exit_code = 6


class KeyTypeMismatch(KeyPathError):
    """The secret exists but is not usable as a volume key (type, algorithm, size, expiry)."""

    exit_code = 7


class SecretConflict(KeyPathError):
    """Barbican refused because of the secret's state (e.g. it still has consumers)."""

    exit_code = 20


class KeyServiceError(KeyPathError):
    """Barbican gave an answer byok does not expect (an HTTP status outside the contract)."""

    exit_code = 26


# --- the LUKS layer --------------------------------------------------------------------------


class LuksError(ByokError):
    """Base: a LUKS volume, its header, dm-crypt, offline recovery."""


class WrongKey(LuksError):
    """No keyslot of the LUKS header opens with this passphrase."""

    exit_code = 18


class NotLuks(LuksError):
    """The device carries no LUKS header (and is not marked as new and blank)."""

    exit_code = 8


class HeaderCorrupt(LuksError):
    """The device looks like it held LUKS but the header cannot be parsed or verified."""

    exit_code = 19


class DeviceMapperUnavailable(LuksError):
    """The kernel that ran the command has no device-mapper (dm-crypt)."""

    exit_code = 9


class FormatRefused(LuksError):
    """byok's guard stopped os-brick from running luksFormat on a device."""

    exit_code = 27


class EncryptionSpecInvalid(LuksError):
    """The volume's encryption metadata (provider, cipher, key reference) cannot be used."""

    exit_code = 29


class RecoveryError(LuksError):
    """Offline recovery could not read the volume (unreadable file, unsupported format)."""

    exit_code = 28


class RecoveryRefused(RecoveryError):
    """Recovery would have to answer with bytes it cannot vouch for: it names the byte ranges
    of the plaintext device and why, and writes nothing."""

    exit_code = 15

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


# --- guests and processes --------------------------------------------------------------------


class GuestError(ByokError):
    """A guest kernel failed to boot, timed out or reported an error (``byok doctor`` says why).

    The message names the backend and the cause, also kept as ``backend``, ``cause``, ``fix``.
    """

    exit_code = 10

    def __init__(self, message: str, *, hint: str | None = None, backend: str | None = None,
                 cause: str | None = None, fix: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.backend = backend
        self.cause = cause or message
        self.fix = fix


class ProcessError(ByokError):
    """Base: an external program is missing or misbehaved."""


class CommandFailed(ProcessError):
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

    exit_code = 25


class ToolMissing(ProcessError):
    """A program byok needs is not installed; the hint names the Debian package."""

    exit_code = 12


# --- the embedded stack ----------------------------------------------------------------------


class StackError(ByokError):
    """The embedded Keystone/Barbican (or ``byok cinder``'s services) could not be configured,
    started or stopped."""

    exit_code = 11


class PortInUse(StackError):
    """A port the stack wants is taken by another process."""

    exit_code = 24


class CinderError(ByokError):
    """Cinder's REST API refused a request or a resource did not reach the wanted status."""

    exit_code = 31

    def __init__(self, message: str, *, status: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


# --- volumes, rotation -----------------------------------------------------------------------


class LifecycleError(ByokError):
    """Base: the prototype volume service (volumes, copies, rotation)."""


class VolumeError(LifecycleError):
    """A volume operation failed; the volume is left as it was."""

    exit_code = 14


class VolumeNotFound(VolumeError):
    """No volume with that id in the pool."""

    exit_code = 21


class VolumeBusy(VolumeError):
    """Another operation holds the volume (for example a rotation in progress)."""

    exit_code = 22


class RotationError(VolumeError):
    """A rotation could not complete; the journal says what state the volume is in."""

    exit_code = 23


# --- the research harness --------------------------------------------------------------------


class HarnessError(ByokError):
    """Base: the research harness."""


class ExperimentError(HarnessError):
    """The research harness could not run or report an experiment."""

    exit_code = 16


class SkipExperiment(HarnessError):
    """An experiment cannot run here (``ctx.skip(reason)``); recorded as skipped, not failed."""

    exit_code = 30


ABSTRACT = (KeyPathError, LuksError, ProcessError, LifecycleError, HarnessError)


def _all(cls: type[ByokError]) -> list[type[ByokError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all(sub)
    return out


def exit_codes() -> list[tuple[int, str, str]]:
    """(exit code, error class, what it means) for every kind, sorted by code: the table the
    README and ``byok exit-codes`` show. Codes are unique (a unit test holds them to that)."""
    rows = [(0, "-", "success")]
    for cls in _all(ByokError):
        if cls in ABSTRACT:
            continue
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        rows.append((cls.exit_code, cls.__name__, " ".join(doc.split())))
    return sorted(rows)
