"""Resolve latency: castellan's stock Barbican backend ``get`` vs byok's ``Resolver.resolve``.

Same secret, same identity, same run, interleaved. castellan authenticates from scratch on every
call (discovery + token + metadata + payload); byok reuses the identity's session and token.
Target (issue 9): byok p50 <= 0.2 x castellan p50.
"""

from __future__ import annotations

import os

from byok.bench.stats import interleaved, summary
from byok.common.sensitive import Sensitive
from byok.keys.identity import Identity
from byok.keys.resolver import Resolver

TARGET_RATIO = 0.2


def run(identity: Identity, *, n: int = 30) -> dict:
    from castellan import key_manager

    from byok.key_manager.byok_key_manager import configure

    resolver = Resolver(identity)
    ref = resolver.api.store(Sensitive(os.urandom(64)), secret_type="symmetric",
                             name="bench-resolve", algorithm="aes", bit_length=512)
    try:
        km = key_manager.API(configure(auth_url=identity.auth_url, backend="barbican"))
        ctx = identity.castellan_context()
        t_castellan, t_byok = interleaved(
            lambda: km.get(ctx, ref.secret_id).get_encoded(),
            lambda: resolver.resolve(ref),
            n,
        )
    finally:
        resolver.api.delete(ref, force=True)
    c, b = summary(t_castellan), summary(t_byok)
    ratio = b["p50"] / c["p50"]
    return {
        "name": "resolve",
        "unit": "s",
        "castellan_get": c,
        "byok_resolve": b,
        "ratio_p50": ratio,
        "ratio_p95": b["p95"] / c["p95"],
        "target": f"ratio_p50 <= {TARGET_RATIO}",
        "target_met": ratio <= TARGET_RATIO,
    }
