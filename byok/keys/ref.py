"""Parse and validate a user's key reference; nothing else.

A key reference is what a user types into ``--key-ref`` (and what a Cinder API field would carry):
either a Barbican secret href ``http(s)://host[:port][/prefix]/v1/secrets/<uuid>`` or a bare
secret UUID that is resolved against the configured Barbican. The parser is deliberately strict,
because the href decides *where* the service will send a user's credentials:

* the href's endpoint (scheme, host, port, path prefix) must be one of the configured key-manager
  endpoints — otherwise a user could make Cinder send its token to any host;
* no credentials, query or fragment in the URL, no percent-encoding, no ``.``/``..`` segments,
  no empty segments, ASCII only, no whitespace or control characters, bounded length;
* the id must be a hyphenated UUID (Barbican's form); output is canonical (lower-case UUID,
  lower-case host, default port dropped), so two spellings of one secret compare equal.

Every input either parses to a :class:`KeyRef` or raises :class:`KeyRefInvalid` — a property
test with hypothesis holds the parser to that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from byok.common.errors import KeyRefInvalid

MAX_LENGTH = 1024
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True, order=True)
class KeyRef:
    """A validated reference to one Barbican secret.

    ``endpoint`` is the canonical key-manager base URL (``http://127.0.0.1:19311``, or with a
    path prefix such as ``https://cloud/key-manager``); it is ``None`` for a bare UUID that has
    not been bound to an endpoint yet.
    """

    secret_id: str
    endpoint: str | None = None

    @property
    def href(self) -> str:
        if self.endpoint is None:
            raise KeyRefInvalid(
                f"key reference {self.secret_id} is a bare UUID with no key-manager endpoint",
                hint="bind it to the cloud's Barbican endpoint first (KeyRef.bind)",
            )
        return f"{self.endpoint}/v1/secrets/{self.secret_id}"

    def bind(self, endpoint: str) -> KeyRef:
        """This reference, resolved against ``endpoint`` if it was a bare UUID."""
        if self.endpoint is not None:
            return self
        return KeyRef(self.secret_id, canonical_endpoint(endpoint))

    def __str__(self) -> str:
        return self.href if self.endpoint else self.secret_id


def _fail(text: str, why: str, hint: str | None = None) -> KeyRefInvalid:
    shown = text if len(text) <= 80 else text[:77] + "..."
    shown = shown.encode("ascii", "backslashreplace").decode()
    return KeyRefInvalid(f"invalid key reference {shown!r}: {why}", hint=hint)


def canonical_endpoint(url: str) -> str:
    """Canonical form of a key-manager base URL (scheme://host[:port][/prefix], no slash at end)."""
    if not isinstance(url, str) or not url:
        raise _fail(str(url), "endpoint must be a non-empty string")
    parts = _split(url.rstrip("/"), what="endpoint")
    segments = [s for s in parts[3].split("/") if s] if parts[3] else []
    # Accept a version suffix in a configured endpoint ("http://h:9311/v1"), drop it.
    if segments and segments[-1] == "v1":
        segments = segments[:-1]
    return _join(parts[0], parts[1], parts[2], segments)


def _split(text: str, *, what: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of an http(s) URL after the structural checks."""
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError as e:
        raise _fail(text, f"{what} is not a valid URL ({e})") from None
    if u.scheme not in ("http", "https"):
        raise _fail(text, f"{what} must use http or https, not {u.scheme or 'nothing'!r}")
    if "@" in u.netloc:
        raise _fail(text, "credentials in the URL are not allowed")
    if u.query or "?" in text:
        raise _fail(text, "a query string is not allowed")
    if u.fragment or "#" in text:
        raise _fail(text, "a fragment is not allowed")
    host = u.hostname or ""
    if not host:
        raise _fail(text, f"{what} has no host")
    if u.netloc.startswith("["):
        host = f"[{host}]"  # IPv6 literal, validated by urlsplit
    elif not _HOST.fullmatch(host) or len(host) > 253:
        raise _fail(text, f"host {host!r} is not a valid host name or address")
    if port is not None and not 0 < port < 65536:
        raise _fail(text, "port out of range")
    netloc_rest = u.netloc.rsplit("]", 1)[-1]
    if ":" in netloc_rest and port is None:
        raise _fail(text, "empty port")
    return u.scheme, host, port, u.path


def _join(scheme: str, host: str, port: int | None, segments: list[str]) -> str:
    netloc = host if port in (None, _DEFAULT_PORT[scheme]) else f"{host}:{port}"
    prefix = "".join("/" + s for s in segments)
    return f"{scheme}://{netloc}{prefix}"


def parse(text: object, *, allowed_endpoints: Iterable[str] = ()) -> KeyRef:
    """Parse a key reference. Hrefs must point at one of ``allowed_endpoints``.

    Raises :class:`KeyRefInvalid` with a message that says exactly what is wrong.
    """
    if not isinstance(text, str):
        raise KeyRefInvalid(f"a key reference must be text, not {type(text).__name__}")
    if not text:
        raise KeyRefInvalid("the key reference is empty")
    if len(text) > MAX_LENGTH:
        raise _fail(text, f"longer than {MAX_LENGTH} characters")
    if not text.isascii():
        raise _fail(text, "only ASCII characters are allowed")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise _fail(text, "whitespace and control characters are not allowed")
    if "\\" in text:
        raise _fail(text, "backslashes are not allowed")
    if _UUID.fullmatch(text):
        return KeyRef(text.lower())
    if "://" not in text:
        raise _fail(
            text,
            "not a secret UUID (8-4-4-4-12 hex digits) or an http(s) secret href",
            hint="use the secret_ref Barbican printed, or its UUID",
        )
    if "%" in text:
        raise _fail(text, "percent-encoding is not allowed")
    scheme, host, port, path = _split(text, what="href")
    if not path.startswith("/"):
        raise _fail(text, "the href has no path")
    segments = path[1:].split("/")
    if any(s == "" for s in segments):
        raise _fail(text, "empty path segment (// or trailing slash)")
    if any(s in (".", "..") for s in segments):
        raise _fail(text, "'.' and '..' path segments are not allowed")
    if any(not _SEGMENT.fullmatch(s) for s in segments):
        raise _fail(text, "unexpected characters in the path")
    if len(segments) < 3 or segments[-3:-1] != ["v1", "secrets"]:
        raise _fail(text, "the path must end in /v1/secrets/<uuid>")
    secret_id = segments[-1]
    if not _UUID.fullmatch(secret_id):
        raise _fail(text, f"{secret_id!r} is not a secret UUID")
    endpoint = _join(scheme, host, port, segments[:-3])
    allowed = {canonical_endpoint(e) for e in allowed_endpoints}
    if not allowed:
        raise _fail(text, "no key-manager endpoint is configured to check the href against")
    if endpoint not in allowed:
        raise _fail(
            text,
            f"{endpoint} is not this cloud's key manager",
            hint="allowed: " + ", ".join(sorted(allowed)),
        )
    return KeyRef(secret_id.lower(), endpoint)
