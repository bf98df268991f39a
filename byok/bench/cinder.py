"""Cinder latency through the real services (``byok cinder up``): create, clone and delete of an
encrypted volume, the user-key path against today's, interleaved in one run.

Two deployments of the patched Cinder run side by side on one RabbitMQ (separate databases,
exchanges and hosts): this stack's default one with castellan's ``byok`` backend, and a second
one (``bench-barbican``, cinder-api on the default's port + 1) with the stock ``barbican``
backend. Per round, each side runs once:

* ``byok``: create with the user's key ref (3.72 ``encryption_key_id``), clone it, delete both;
* ``barbican``: what Cinder does today — create a LUKS volume for which Cinder orders a key in
  Barbican, clone it (Cinder copies the key), delete both (Cinder deletes the keys);
* ``barbican_user_key`` (contrast, not the target): the stock backend given the user's key.

Every latency is Cinder's answer plus the wait until the resource is ``available`` (or gone),
as a client sees it. Target: byok p50 / barbican p50 <= 1.0 for each operation (the user-key
path is not slower than today's); the volume copy (qemu-img) is the same on both sides.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from byok.bench.stats import summary
from byok.common.errors import CinderError
from byok.common.sensitive import Sensitive

TARGET_RATIO = 1.0
OPS = ("create", "clone", "delete")
BENCH_INSTANCE = "bench-barbican"
MAX_ATTEMPTS = 3
#: Status polling interval: the resolution of every latency (a delete takes ~0.4 s).
POLL_S = 0.05


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _round(api: Any, key_href: str | None) -> dict[str, float]:
    """One create, clone and delete on ``api``: seconds each (the clone's delete untimed).
    A failed operation raises CinderError after what it made is deleted."""
    fields = {"volume_type": "luks", "encryption_key_id": key_href}
    made: list[str] = []

    def create(**kw: Any) -> dict:
        vid = api.create_volume(1, **kw)["id"]
        made.append(vid)
        return api.wait("volume", vid, "available", poll=POLL_S)

    try:
        t_create, vol = _timed(lambda: create(**fields))
        t_clone, clone = _timed(lambda: create(source_volid=vol["id"]))
        api.delete_and_wait("volume", clone["id"])
        t_delete, _ = _timed(lambda: api.delete_and_wait("volume", vol["id"], poll=POLL_S))
    except CinderError:
        _remove(api, made)
        raise
    return {"create": t_create, "clone": t_clone, "delete": t_delete}


def _remove(api: Any, volume_ids: list[str]) -> None:
    """Delete volumes a failed round left, newest first, with the snapshots a failed clone
    leaves on its source (NfsDriver clones through a temporary snapshot)."""
    for vid in reversed(volume_ids):
        with contextlib.suppress(CinderError):
            for snap in api.request("GET", f"/snapshots?volume_id={vid}")["snapshots"]:
                api.delete_and_wait("snapshot", snap["id"])
        with contextlib.suppress(CinderError):
            api.delete_and_wait("volume", vid)


@contextlib.contextmanager
def _deployments(stack: Any, say: Callable[[str], None]):
    """(byok services, barbican services), each started here if it was not running and
    stopped again afterwards; the second shares the first's broker."""
    from byok.common.errors import UsageError
    from byok.stack.cinder import CinderServices, CinderSettings

    main = CinderServices(stack)
    if main.settings.backend != "byok":
        raise UsageError(f"this stack's Cinder runs castellan backend {main.settings.backend!r}",
                         hint="byok cinder down && byok cinder up --backend byok")
    cfg = CinderSettings.load(stack.cfg.state_dir, BENCH_INSTANCE,
                              api_port=main.settings.api_port + 1,
                              rabbitmq_port=main.settings.rabbitmq_port, backend="barbican",
                              extra_conf=[])
    stock = CinderServices(stack, cfg)
    started: list[tuple[Any, bool]] = []
    try:
        if not main.status()["healthy"]:
            say("byok cinder up (castellan backend byok)")
            was = main.running()
            main.up(progress=say)
            if not was:
                started.append((main, True))
        if not stock.status()["healthy"]:
            say(f"second deployment {BENCH_INSTANCE} on {stock.api_url} (backend barbican)")
            was = stock.running()
            stock.up(progress=say, broker=False)
            if not was:
                started.append((stock, False))
        yield main, stock
    finally:
        for svc, broker in reversed(started):
            svc.down(broker=broker)


def run(stack: Any, *, n: int = 8, progress: Callable[[str], None] | None = None) -> dict:
    from byok.keys.barbican import BarbicanAPI
    from byok.stack.cinder_api import CinderAPI

    say = progress or (lambda _m: None)
    if stack is None:
        return {"name": "cinder", "skipped": "needs the embedded stack (byok cinder runs "
                                             "beside it)"}
    from byok.stack.cinder import openstack_venv

    if not (openstack_venv() / "bin" / "python").exists():  # `bench all` goes on without it
        return {"name": "cinder", "skipped": f"Cinder is not installed ({openstack_venv()}): "
                                             "run ./dev openstack"}
    alice = stack.identity("alice")
    owner = BarbicanAPI(alice, stack.cfg.barbican_url)
    secrets_at_start = owner.count_secrets()
    ref = owner.store(Sensitive(os.urandom(64)), secret_type="symmetric", name="bench-cinder",
                      algorithm="aes", bit_length=512, mode="xts")
    try:
        with _deployments(stack, say) as (main, stock):
            sides = {"byok": (CinderAPI(alice, main.api_url), ref.href),
                     "barbican": (CinderAPI(alice, stock.api_url), None),
                     "barbican_user_key": (CinderAPI(alice, stock.api_url), ref.href)}
            failures: list[dict[str, str]] = []
            for name, (api, key) in sides.items():  # warm-up, not counted
                say(f"warm-up {name}")
                _attempts(name, api, key, failures, say)
            samples: dict[str, dict[str, list[float]]] = {
                s: {op: [] for op in OPS} for s in sides}
            for i in range(n):
                say(f"round {i + 1}/{n}")
                for name, (api, key) in sides.items():
                    for op, t in _attempts(name, api, key, failures, say).items():
                        samples[name][op].append(t)
    finally:
        with contextlib.suppress(Exception):
            owner.delete(ref, force=True)
    leaked = owner.count_secrets() - secrets_at_start
    out = report(samples, n=n, deployments={"byok": main.api_url, "barbican": stock.api_url},
                 secrets_left_behind=leaked)
    out["failed_rounds"] = failures
    out["poll_s"] = POLL_S
    return out


def _attempts(side: str, api: Any, key: str | None, failures: list[dict[str, str]],
              say: Callable[[str], None]) -> dict[str, float]:
    """A round on ``side``, repeated after a failure (counted in the JSON), at most
    MAX_ATTEMPTS times: qemu-img's own PBKDF benchmark fails now and then on a busy machine
    ("Unable to get accurate CPU usage"), whatever the key manager."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _round(api, key)
        except CinderError as e:
            failures.append({"side": side, "error": e.message[:300]})
            say(f"  {side}: round failed ({e.message[:80]}), attempt {attempt}/{MAX_ATTEMPTS}")
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def report(samples: dict[str, dict[str, list[float]]], *, n: int, deployments: dict[str, str],
           secrets_left_behind: int) -> dict:
    """The JSON of the benchmark from its samples (side -> operation -> seconds)."""
    out: dict[str, Any] = {"name": "cinder", "unit": "s", "n": n, "deployments": deployments,
                           "target": f"byok p50 / barbican p50 <= {TARGET_RATIO} "
                                     "(create, clone, delete)"}
    for name in samples:
        out[name] = {op: summary(samples[name][op]) for op in OPS}
    ratios = {op: out["byok"][op]["p50"] / out["barbican"][op]["p50"] for op in OPS}
    out["ratio_p50"] = ratios
    out["ratio_p95"] = {op: out["byok"][op]["p95"] / out["barbican"][op]["p95"] for op in OPS}
    out["ratio_p50_vs_barbican_user_key"] = {
        op: out["byok"][op]["p50"] / out["barbican_user_key"][op]["p50"] for op in OPS}
    # Cinder deletes the keys it ordered with their volumes; the user's key is removed here.
    out["secrets_left_behind"] = secrets_left_behind
    out["target_met"] = all(r <= TARGET_RATIO for r in ratios.values())
    return out
