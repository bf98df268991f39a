"""The key path under load, on loopback against the embedded Barbican (two gunicorn workers):
concurrent resolves through byok's resolver and volume-scoped gets through the castellan
backend, bounded in count and time; tokens Keystone really issued are counted on the wire (a
pass-through proxy in front of Keystone); and Barbican restarted in the middle of a wave —
every caller gets its key or a typed KeyServiceUnavailable within its deadline, none hangs."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
from castellan import key_manager
from castellan.common.credentials import keystone_password

from byok.common.errors import KeyServiceUnavailable
from byok.harness.faults import FaultInjectingProxy
from byok.key_manager.byok_key_manager import configure, volume_scope
from byok.keys.identity import Identity
from byok.keys.resolver import Resolver
from tests.reliability.conftest import count

pytestmark = pytest.mark.stack
RESOLVES = 200
SCOPED_GETS = 32
THREADS = 32
DEADLINE = 8.0


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _context(identities, url: str) -> keystone_password.KeystonePassword:
    a = identities("alice").auth_args
    return keystone_password.KeystonePassword(
        password=a["password"], auth_url=url, username=a["username"],
        user_domain_name=a.get("user_domain_name", "Default"), project_name=a["project_name"],
        project_domain_name=a.get("project_domain_name", "Default"))


def _tokens(proxy: FaultInjectingProxy) -> int:
    return sum(1 for s in proxy.seen if s == ("POST", "/v3/auth/tokens"))


def test_concurrent_resolves_reuse_one_token_and_never_fail(stack, identities, make_key):
    ref, raw = make_key("alice")
    with FaultInjectingProxy(stack.cfg.keystone_url, "pass") as ks:
        ident = Identity.from_castellan(_context(identities, ks.url + "/v3"),
                                        auth_url=ks.url + "/v3")
        resolver = Resolver(ident, endpoint=stack.cfg.barbican_url, deadline=DEADLINE)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def one() -> None:
            t0 = time.perf_counter()
            try:
                ok = resolver.resolve(ref).payload.reveal() == raw
                err = None if ok else "wrong bytes"
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
            with lock:
                latencies.append(time.perf_counter() - t0)
                if err:
                    errors.append(err)

        t0 = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            _done, pending = wait([pool.submit(one) for _ in range(RESOLVES)], timeout=120)
        wall = time.monotonic() - t0
        tokens = _tokens(ks)
    assert not pending and len(latencies) == RESOLVES
    assert errors == []
    assert tokens == 1, f"session reuse broke under concurrency: {tokens} tokens"
    count("load: concurrent resolves", RESOLVES)
    count("load: resolve errors", len(errors))
    count("load: resolve p50 ms", round(statistics.median(latencies) * 1000))
    count("load: resolve p99 ms", round(_p(latencies, 99) * 1000))
    count("load: resolve tokens issued", tokens)
    count("load: resolves per second", round(RESOLVES / wall))


def test_concurrent_volume_scoped_gets_bind_every_volume(stack, identities, make_key,
                                                        barbican):
    ref, raw = make_key("alice")
    with FaultInjectingProxy(stack.cfg.keystone_url, "pass") as ks:
        url = ks.url + "/v3"
        km = key_manager.API(configure(auth_url=url, backend="byok"))
        ctx = _context(identities, url)
        errors: list[str] = []
        latencies: list[float] = []

        def get(i: int) -> None:
            t0 = time.perf_counter()
            try:
                with volume_scope(f"load-vol-{i}"):
                    if km.get(ctx, ref.secret_id).get_encoded() != raw:
                        errors.append("wrong bytes")
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

        with ThreadPoolExecutor(THREADS) as pool:
            _done, pending = wait([pool.submit(get, i) for i in range(SCOPED_GETS)], timeout=180)
        tokens = _tokens(ks)
    assert not pending and errors == []
    bound = {c["resource_id"] for c in barbican("alice").consumers(ref)}
    assert {f"load-vol-{i}" for i in range(SCOPED_GETS)} <= bound
    assert tokens <= 2, tokens  # castellan's per-credential client, then byok's identity
    count("load: concurrent volume-scoped gets", SCOPED_GETS)
    count("load: scoped get errors", len(errors))
    count("load: scoped get p99 ms", round(_p(latencies, 99) * 1000))
    count("load: scoped get tokens issued", tokens)


def test_barbican_restarted_mid_wave_every_caller_answers_in_time(stack, identities, make_key):
    """Down for longer than a caller's deadline: those caught in the outage get the typed
    error in time, those before and after get the key."""
    ref, raw = make_key("alice")
    deadline = 3.0
    resolver = Resolver(identities("alice"), endpoint=stack.cfg.barbican_url, deadline=deadline)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        try:
            kind = "ok" if resolver.resolve(ref).payload.reveal() == raw else "wrong bytes"
        except KeyServiceUnavailable:
            kind = "typed"
        except Exception as e:
            kind = f"{type(e).__name__}: {e}"
        with lock:
            outcomes.append((kind, time.perf_counter() - t0))

    server = stack.barbican()
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(one) for _ in range(40)]
        time.sleep(0.2)
        server.stop()  # every worker goes
        futures += [pool.submit(one) for _ in range(40)]
        time.sleep(deadline + 2)
        server.start()
        futures += [pool.submit(one) for _ in range(40)]
        _done, pending = wait(futures, timeout=deadline * 4 + 60)
    assert not pending, f"{len(pending)} callers hung"
    kinds = [k for k, _ in outcomes]
    assert set(kinds) <= {"ok", "typed"}, kinds
    # A caller waits at most its deadline plus one attempt's timeout (and some scheduling).
    assert max(s for _, s in outcomes) < deadline + 6, max(s for _, s in outcomes)
    assert kinds.count("ok") > 0 and kinds.count("typed") > 0, kinds
    assert resolver.resolve(ref).payload.reveal() == raw  # and afterwards it simply works
    count("load: restart-wave callers", len(outcomes))
    count("load: restart-wave typed KeyServiceUnavailable", kinds.count("typed"))
    count("load: restart-wave hung or untyped", len(outcomes) - kinds.count("ok")
          - kinds.count("typed"))
