"""From a key reference to validated key material, and from key material to the LUKS passphrase.

``Resolver(identity).resolve(ref)`` reads a secret's metadata and payload with the identity's
reused session, then validates that it can be a volume key:

* secret type ``symmetric`` with algorithm AES and 256 or 512 bits (AES-XTS splits the key in
  two, so aes-xts-plain64 with a 512-bit key is AES-256-XTS; Cinder's usual 256 means AES-128),
  payload length matching the declared size, content type ``application/octet-stream``; or
* secret type ``passphrase``: non-empty UTF-8 text (os-brick decodes it as UTF-8);
* status ACTIVE and not expired.

:func:`passphrase` is os-brick's rule (``os_brick.utils.get_passphrase_from_secret``):
a passphrase secret is used as-is, anything else is hex-encoded. Key material is never cached
here; every resolve reads Barbican, so a revocation takes effect at the next resolve.
"""

from __future__ import annotations

import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Any

from byok.common.errors import KeyRefInvalid, KeyTypeMismatch
from byok.common.sensitive import Sensitive
from byok.keys import ref as keyref
from byok.keys.barbican import DEFAULT_DEADLINE, BarbicanAPI
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef

VOLUME_KEY_TYPES = ("symmetric", "passphrase")
SYMMETRIC_BITS = (256, 512)


@dataclass(frozen=True)
class SecretInfo:
    """A secret's metadata as Barbican reports it (no key material)."""

    ref: KeyRef
    secret_type: str
    algorithm: str | None
    bit_length: int | None
    mode: str | None
    name: str | None
    status: str | None
    expiration: str | None
    creator_id: str | None
    content_type: str | None
    consumers: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_barbican(cls, ref: KeyRef, meta: dict[str, Any]) -> SecretInfo:
        ctypes = meta.get("content_types") or {}
        return cls(
            ref=ref,
            secret_type=str(meta.get("secret_type") or "opaque"),
            algorithm=meta.get("algorithm"),
            bit_length=int(meta["bit_length"]) if meta.get("bit_length") else None,
            mode=meta.get("mode"),
            name=meta.get("name"),
            status=meta.get("status"),
            expiration=meta.get("expiration"),
            creator_id=meta.get("creator_id"),
            content_type=ctypes.get("default"),
            consumers=tuple(meta.get("consumers") or ()),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "type": self.secret_type,
            "algorithm": self.algorithm,
            "bits": self.bit_length,
            "mode": self.mode,
            "name": self.name,
            "status": self.status,
            "expiration": self.expiration,
            "creator_id": self.creator_id,
            "consumers": list(self.consumers),
        }


@dataclass(frozen=True)
class KeyMaterial:
    """A validated volume key: its metadata and the secret bytes (wrapped, never printed)."""

    info: SecretInfo
    payload: Sensitive

    @property
    def ref(self) -> KeyRef:
        return self.info.ref

    def castellan_object(self) -> Any:
        """The castellan object Barbican's backend would return (what os-brick receives)."""
        from castellan.common.objects import passphrase as c_pass
        from castellan.common.objects import symmetric_key

        if self.info.secret_type == "passphrase":
            return c_pass.Passphrase(
                self.payload.reveal(), name=self.info.name, id=self.ref.secret_id
            )
        return symmetric_key.SymmetricKey(
            "AES",
            self.info.bit_length or len(self.payload) * 8,
            self.payload.reveal(),
            name=self.info.name,
            id=self.ref.secret_id,
        )


def content_type_for(secret_type: str) -> str:
    return "text/plain" if secret_type == "passphrase" else "application/octet-stream"


def validate_metadata(info: SecretInfo, *, now: dt.datetime | None = None) -> None:
    """Raise :class:`KeyTypeMismatch` unless the metadata describes a usable volume key."""
    ref = info.ref.secret_id
    if info.secret_type not in VOLUME_KEY_TYPES:
        raise KeyTypeMismatch(
            f"secret {ref} is of type {info.secret_type!r}, which cannot be a volume key",
            hint="store a symmetric AES key (256 or 512 bits) or a passphrase secret",
        )
    if info.content_type is None:
        # Barbican lists no content type for a secret created without a payload (metadata only);
        # reading it would answer 404, which is not "no such secret".
        raise KeyTypeMismatch(f"secret {ref} has no payload (it was stored as metadata only)",
                              hint="store the key material in it, or use another secret")
    if info.status and info.status.upper() != "ACTIVE":
        raise KeyTypeMismatch(f"secret {ref} is {info.status}, not ACTIVE")
    if info.expiration:
        expires = _parse_time(info.expiration)
        if expires is None:  # fail closed: an expiry we cannot read may be in the past
            raise KeyTypeMismatch(f"secret {ref} has an unreadable expiration {info.expiration!r}")
        if expires <= (now or dt.datetime.now(dt.UTC)):
            raise KeyTypeMismatch(f"secret {ref} expired at {info.expiration}")
    if info.secret_type == "symmetric":
        if (info.algorithm or "").lower() != "aes":
            raise KeyTypeMismatch(
                f"secret {ref} is a {info.algorithm or 'untyped'} key; LUKS volumes here use AES"
            )
        if info.bit_length not in SYMMETRIC_BITS:
            raise KeyTypeMismatch(
                f"secret {ref} is a {info.bit_length}-bit key; a volume key must be 256 or 512 "
                "bits (512 for AES-256-XTS)",
            )
        if info.content_type and info.content_type != "application/octet-stream":
            raise KeyTypeMismatch(
                f"secret {ref} holds {info.content_type} data, expected application/octet-stream"
            )
    if info.secret_type == "passphrase" and info.content_type not in (None, "text/plain"):
        raise KeyTypeMismatch(
            f"passphrase secret {ref} holds {info.content_type} data, expected text/plain"
        )


def validate_payload(info: SecretInfo, payload: Sensitive) -> None:
    """Raise :class:`KeyTypeMismatch` unless the bytes fit the metadata."""
    ref = info.ref.secret_id
    if not payload:
        raise KeyTypeMismatch(f"secret {ref} has an empty payload")
    if info.secret_type == "symmetric" and len(payload) * 8 != info.bit_length:
        raise KeyTypeMismatch(
            f"secret {ref} declares {info.bit_length} bits but holds {len(payload) * 8}"
        )
    if info.secret_type == "passphrase":
        try:
            payload.reveal().decode("utf-8")
        except UnicodeDecodeError:
            raise KeyTypeMismatch(f"passphrase secret {ref} is not UTF-8 text") from None


def passphrase(key: KeyMaterial) -> Sensitive:
    """The LUKS passphrase os-brick derives from this key (its exact rule).

    ``passphrase`` secrets: the text itself. Everything else: lower-case hex of the bytes, so a
    256-bit key becomes a 64-character passphrase with 256 bits of entropy.
    """
    if key.info.secret_type == "passphrase":
        return Sensitive(key.payload.reveal().decode("utf-8"))
    return Sensitive(binascii.hexlify(key.payload.reveal()).decode())


class Resolver:
    """Resolves key references for one identity against one Barbican endpoint."""

    def __init__(
        self,
        identity: Identity,
        *,
        endpoint: str | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.identity = identity
        self.endpoint = keyref.canonical_endpoint(endpoint or identity.endpoint("key-manager"))
        self.api = BarbicanAPI(identity, self.endpoint, deadline=deadline)

    def parse(self, text: str) -> KeyRef:
        """Parse user input against this cloud's key-manager endpoint, bound to it."""
        return keyref.parse(text, allowed_endpoints=[self.endpoint]).bind(self.endpoint)

    def _ref(self, ref: KeyRef | str) -> KeyRef:
        if isinstance(ref, str):
            return self.parse(ref)
        if ref.endpoint is not None and ref.endpoint != self.endpoint:
            # A KeyRef built elsewhere is held to the same rule as user input: this identity's
            # token only ever goes to this cloud's key manager.
            raise KeyRefInvalid(
                f"key reference {ref} points at {ref.endpoint}, not this cloud's key manager",
                hint=f"allowed: {self.endpoint}",
            )
        return ref.bind(self.endpoint)

    def info(self, ref: KeyRef | str, *, validate: bool = True) -> SecretInfo:
        """Metadata only (one HTTP request); validated as a volume key unless told not to."""
        r = self._ref(ref)
        info = SecretInfo.from_barbican(r, self.api.secret(r))
        if validate:
            validate_metadata(info)
        return info

    def resolve(self, ref: KeyRef | str) -> KeyMaterial:
        """Metadata + payload (two HTTP requests), validated; raises typed errors."""
        info = self.info(ref)
        payload = self.api.payload(info.ref, content_type_for(info.secret_type))
        validate_payload(info, payload)
        return KeyMaterial(info, payload)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
