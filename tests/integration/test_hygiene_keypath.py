"""Secret hygiene of the key path: with every logger at DEBUG (keystoneauth included), a full
store/resolve/castellan/guard cycle and its failures leave no key bytes (raw, hex, base64) in
logs, exception texts or CLI output."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from castellan import key_manager

from byok.common.errors import ByokError
from byok.common.sensitive import Sensitive
from byok.key_manager.byok_key_manager import configure, volume_scope
from byok.keys import guard
from byok.keys import resolver as keys

pytestmark = pytest.mark.stack


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(self.format(record))


def _leaks(text: str, secrets: list[bytes]) -> list[str]:
    """Every form (raw bytes, hex, base64) of every secret, searched in the bytes of ``text``
    (surrogateescape keeps raw bytes that came in undecodable as the same bytes)."""
    blob = text.encode("utf-8", "surrogateescape")
    return [f"a {len(form)}-byte form of a secret" for raw in secrets
            for form in Sensitive(raw).forms() if form in blob]


def test_no_key_bytes_in_debug_logs_errors_or_cli_output(stack, identities, make_key):
    cap = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    secrets: list[bytes] = []
    texts: list[str] = []
    try:
        alice = identities("alice")
        ref_sym, raw_sym = make_key("alice", "aes512")
        ref_pass, raw_pass = make_key("alice", "passphrase")
        secrets += [raw_sym, raw_pass]
        r = keys.Resolver(alice)
        for ref in (ref_sym, ref_pass):
            km = r.resolve(ref)
            secrets.append(keys.passphrase(km).reveal())
            texts += [repr(km), str(km.payload), repr(km.info)]
        km_backend = key_manager.API(configure(auth_url=stack.cfg.keystone_url))
        ctx = alice.castellan_context()
        with volume_scope("vol-hygiene"):
            for ref in (ref_sym, ref_pass):
                obj = km_backend.get(ctx, ref.secret_id)
                km_backend.store(ctx, obj)
        from castellan.common.objects import symmetric_key

        fresh = b"\x07" * 64
        new_id = km_backend.store(ctx, symmetric_key.SymmetricKey("AES", 512, fresh))
        secrets.append(fresh)
        km_backend.delete(ctx, new_id)
        guard.bind(ref_sym, user=alice, volume_id="vol-h")
        for failing in (
            lambda: keys.Resolver(identities("bob")).resolve(ref_sym),
            lambda: guard.resolve_for_volume(
                ref_sym, service_identity=identities("cinder"), volume_id="vol-h"
            ),
        ):
            with pytest.raises(ByokError) as ei:
                failing()
            texts += [str(ei.value), repr(ei.value)]
        cli = subprocess.run(
            [sys.executable, "-m", "byok.cli", "--debug", "key", "show", ref_pass.href,
             "--as", "alice"],
            capture_output=True, text=True, timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        texts += [cli.stdout, cli.stderr]
    finally:
        root.removeHandler(cap)
        root.setLevel(old_level)
    assert len(cap.records) > 20  # debug logging really was on
    blob = "\n".join(cap.records + texts)
    assert _leaks(blob, secrets) == []
