"""A container for secret bytes that refuses to show them.

Key material and passphrases travel through byok wrapped in :class:`Sensitive`, so an accidental
``repr()``, f-string, log line or exception message prints ``<Sensitive 32 bytes sha256:ab12…>``
instead of the bytes. Code that really needs the bytes (writing to a subprocess's stdin, handing
a key to castellan) calls :meth:`Sensitive.reveal` explicitly, which makes every such place easy
to find with grep.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import hmac
import logging
from collections.abc import Iterator


class Sensitive:
    """Opaque secret bytes with a non-revealing repr and a short fingerprint."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._data = bytes(data)

    def reveal(self) -> bytes:
        """Return the secret bytes. Every caller is a place where a secret leaves byok."""
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sensitive):
            return hmac.compare_digest(self._data, other._data)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def fingerprint(self) -> str:
        """A short, non-invertible identifier (first 8 bytes of SHA-256), safe to print."""
        return "sha256:" + hashlib.sha256(self._data).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<Sensitive {len(self._data)} bytes {self.fingerprint()}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # pragma: no cover - refuse pickling into logs/files by accident
        raise TypeError("Sensitive values are not picklable")

    def forms(self) -> list[bytes]:
        """The encodings under which these bytes could leak (for hygiene scans in tests)."""
        raw = self._data
        out = [raw, binascii.hexlify(raw), binascii.hexlify(raw).upper(), base64.b64encode(raw)]
        return [f for f in out if len(f) >= 8]


# --- keeping secrets out of HTTP debug logs ------------------------------------------------------

_quiet = contextvars.ContextVar("byok_quiet_http", default=False)
_HTTP_LOGGERS = (
    "keystoneauth.session",
    "keystoneauth.session.request",
    "keystoneauth.session.response",
    "keystoneauth.session.body",
    "keystoneauth.session.request-id",
)


class _DropWhileQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet.get()


_filter = _DropWhileQuiet()


@contextlib.contextmanager
def quiet_http_logs() -> Iterator[None]:
    """Suppress keystoneauth's request/response logging in the enclosed calls.

    With debug logging on, keystoneauth logs JSON and text/plain bodies: a secret POST (base64
    payload) or a passphrase payload GET would land in the log. byok wraps every call that carries
    key material in this context (castellan's own backend does not).
    """
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)
