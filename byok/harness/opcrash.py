"""byok's lifecycle operations killed at every call that changes state, with a ground truth.

Every operation of :mod:`byok.lifecycle.volumes` that writes a volume, its header, its record or
its key bookkeeping — create (format and an escrow keyslot), add-escrow (a keyslot added to a
volume in use), rekey-clone, clone (of a volume with escrow: its slot is wiped on the copy),
snapshot, backup, restore, create from image, image from raw, delete — is run once through the
CLI under the fault injector (``fault_inject.c`` with ``BYOK_FAULT_ALL``: every write, pwrite,
fsync, rename, truncate, copy_file_range, unlink and send — each request to Keystone or
Barbican — of byok and of the cryptsetup it runs), numbering its calls. Then for each N on fresh
inputs it is run again and killed at call N:

* ``tree``: the whole process group stops at call N (nothing after it happens);
* ``cryptsetup``: only cryptsetup dies at its Nth call; byok sees it fail and must undo
  everything itself, before any later call;
* ``torn``: cryptsetup's Nth write reaches the disk only in part (add-escrow: a keyslot or a
  header copy torn on a volume in use).

After each crash comes the next call — :meth:`VolumeService.resume_interrupted` (what every
mutating call does first), and for add-escrow and delete the operation again — and the pool is
checked with readers that are not the code under test (:func:`check`): the volumes that were
only read are byte-identical; the volume under change opens with its key and its plaintext is
the known pattern at every moment (offline reader :mod:`byok.luks.recovery`); no intent, temp
file, staging file or file without a record remains; every record's file opens with its key,
holds exactly its keyslots (``cryptsetup luksDump``: the user's, and the escrow's if it
records one — the other lab key opens nothing: cryptsetup's word), and the plaintext a copy
must hold; Barbican (plain HTTP, :mod:`byok.harness.rawkeys`) lists exactly one consumer per
record on its key and none for anything else, and exactly the recorded escrow secret per
record.

The ``byok`` castellan backend's consumer bookkeeping (bind on a first attach, Cinder's
clone_encryption_key, the volume's delete) is killed the same way at every call — a crash
between two Barbican requests is a numbered state — and then retried as its caller (Cinder)
would; Barbican's consumer list must then hold exactly the volume's consumer (or none), no
other volume's consumer may move, and the user's project never gains or loses a secret. Used by
tests/reliability (a sample), ``byok bench crash-lifecycle`` (every call) and E09/E10.
Fault injection only: byok's real code (in a fork of a warm interpreter,
:mod:`byok.harness.forkserver`) and the real cryptsetup are killed at real calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common.errors import ByokError, ExperimentError, WrongKey
from byok.common.pattern import pattern
from byok.common.sensitive import Sensitive
from byok.harness import crashenum as ce
from byok.harness.forkserver import ForkServer
from byok.harness.rawkeys import RawBarbican
from byok.keys.barbican import BarbicanAPI
from byok.keys.ref import KeyRef
from byok.lifecycle.volumes import ESCROW_NAME, Pool, VolumeService
from byok.luks import cryptsetup as luks
from byok.luks import recovery

DATA = 1 << 20
SERVICE = "cinder"


@dataclass
class Lab:
    """A pool with the inputs every operation reads, two user keys, the readers, and the fork
    server that runs the operations under the injector."""

    svc: VolumeService
    keys: list[KeyRef]
    pw: dict[str, Sensitive]  # key href -> passphrase, derived from the stored bytes
    plain: bytes
    raw: Path
    bases: dict[str, str]  # template | escrowed | image | backup -> resource id
    owner: RawBarbican  # the user's project (consumers of the user keys)
    service: RawBarbican  # the service project (escrow secrets)
    work: Path
    server: ForkServer
    ckey: KeyRef  # the castellan flows' key: its consumers are theirs alone

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(ByokError):
            self.svc.resume_interrupted()
        for rec in self.svc.pool.list():
            with contextlib.suppress(ByokError):
                self.svc.delete(rec.id)
        api = BarbicanAPI(self.svc.user, self.svc.endpoint)
        for k in [*self.keys, self.ckey]:
            with contextlib.suppress(ByokError):
                api.delete(k, force=True)


def build_lab(work: Path, *, clouds_yaml: Path, user_cloud: str, service_cloud: str,
              auth_url: str, endpoint: str,
              on_key: Callable[[bytes], None] | None = None) -> Lab:
    """Keys with known bytes, a raw pattern, an image of it, a volume from the image, a
    volume with an escrow keyslot, a backup; and the fork server."""
    from byok.keys.identity import Identity

    work.mkdir(parents=True, exist_ok=True)
    user = Identity.from_cloud(user_cloud, clouds_yaml=clouds_yaml)
    service = Identity.from_cloud(service_cloud, clouds_yaml=clouds_yaml)
    svc = VolumeService(Pool(work / "pool"), user, service=service, endpoint=endpoint)
    api = BarbicanAPI(user, svc.endpoint)
    keys, pw = [], {}
    for _ in range(2):
        raw_key = os.urandom(64)
        if on_key:
            on_key(raw_key)
        ref = api.store(Sensitive(raw_key), secret_type="symmetric", name="byok-opcrash",
                        algorithm="aes", bit_length=512, mode="xts")
        keys.append(ref)
        pw[ref.href] = recovery.passphrase_from_key_bytes(raw_key)
    ckey_raw = os.urandom(32)
    if on_key:
        on_key(ckey_raw)
    ckey = api.store(Sensitive(ckey_raw), secret_type="symmetric", name="byok-opcrash-castellan",
                     algorithm="aes", bit_length=256)
    raw = work / "data.raw"
    raw.write_bytes(pattern(77, DATA))
    image = svc.image_from_raw(raw, keys[0].href)
    template = svc.create_from_image(image.id)
    escrowed = svc.clone(template.id)
    svc.add_escrow(escrowed.id)
    backup = svc.backup(template.id)
    bases = {"template": template.id, "escrowed": escrowed.id, "image": image.id,
             "backup": backup.id}
    (work / "fault").mkdir(exist_ok=True)
    server = ForkServer(ce.injector(work / "fault"), {
        "clouds_yaml": str(clouds_yaml), "user_cloud": user_cloud,
        "service_cloud": service_cloud, "endpoint": svc.endpoint, "auth_url": auth_url,
        "castellan": True})
    return Lab(svc, keys, pw, raw.read_bytes(), raw, bases,
               RawBarbican(user, svc.endpoint), RawBarbican(service, svc.endpoint), work,
               server, ckey)


# --- the operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation: ``call(lab, target)`` is (VolumeService method, args)."""

    name: str
    call: Callable[[Lab, str | None], tuple[str, list[Any]]]
    makes: str | None = None  # the kind of resource it creates (None: changes the target)
    key: int = 0  # the lab key the new resource must end under
    fresh: bool = False  # a new format: no plaintext to compare
    escrow: bool = False  # the result carries an escrow keyslot
    prepare: Callable[[Lab], str] | None = None  # a fresh target per state
    redo: Callable[[Lab, str], Any] | None = None  # the operation again, in process
    variants: tuple[str, ...] = ("tree",)
    kwargs: dict[str, Any] = field(default_factory=dict)


def _escrowed_target(lab: Lab) -> str:
    vol = lab.svc.clone(lab.bases["template"])
    lab.svc.add_escrow(vol.id)
    lab.svc.header_backup(vol.id)
    return vol.id


def _k(lab: Lab, i: int) -> str:
    return lab.keys[i].href


OPS: dict[str, Op] = {op.name: op for op in [
    Op("create", lambda lab, _t: ("create", [32 << 20, _k(lab, 0)]), kwargs={"escrow": True},
       makes="volume", fresh=True, escrow=True, variants=("tree", "cryptsetup", "torn")),
    Op("add-escrow", lambda _lab, t: ("add_escrow", [t]), escrow=True,
       prepare=lambda lab: lab.svc.clone(lab.bases["template"]).id,
       redo=lambda lab, t: lab.svc.add_escrow(t), variants=("tree", "cryptsetup", "torn")),
    Op("rekey-clone", lambda lab, _t: ("clone", [lab.bases["template"]]), makes="volume",
       key=1, variants=("tree", "cryptsetup", "torn")),
    Op("clone", lambda lab, _t: ("clone", [lab.bases["escrowed"]]), makes="volume",
       variants=("tree", "cryptsetup", "torn")),
    Op("snapshot", lambda lab, _t: ("snapshot", [lab.bases["template"]]), makes="snapshot"),
    Op("backup", lambda lab, _t: ("backup", [lab.bases["template"]]), makes="backup"),
    Op("restore", lambda lab, _t: ("restore", [lab.bases["backup"]]), makes="volume"),
    Op("from-image", lambda lab, _t: ("create_from_image", [lab.bases["image"]]),
       makes="volume"),
    Op("image-from-raw", lambda lab, _t: ("image_from_raw", [{"$path": str(lab.raw)},
                                                            _k(lab, 0)]),
       makes="image", variants=("tree", "cryptsetup", "torn")),
    Op("delete", lambda _lab, t: ("delete", [t]), prepare=_escrowed_target,
       redo=lambda lab, t: lab.svc.delete(t)),
]}


def run_op(lab: Lab, op: Op, target: str | None, env: dict[str, str]) -> int:
    """``op`` in a child of the fork server with the fault environment ``env``: exit code."""
    method, args = op.call(lab, target)
    kwargs = dict(op.kwargs)
    if op.name == "rekey-clone":
        kwargs["key_ref"] = _k(lab, 1)
    task = {"kind": "volume", "pool": str(lab.svc.pool.root), "method": method, "args": args,
            "kwargs": kwargs}
    return lab.server.run(task, env, lab.work / "fault" / "child.log")


# --- what the pool and Barbican hold -----------------------------------------------------------


@dataclass
class View:
    records: dict[str, str]  # id -> record JSON text
    files: dict[str, set[str]]  # pool subdirectory -> names in it
    consumers: dict[str, set[tuple[str, str, str]]]  # key href -> consumers

    def ids(self) -> set[str]:
        """Every resource id any file of the pool names."""
        out = set(self.records)
        for sub in ("data", "journal", "staging", "records", "headers"):
            for name in self.files[sub]:
                out.add(name.split(".", 1)[0] if sub != "headers" else name[:36])
        return out


def view(lab: Lab) -> View:
    root = lab.svc.pool.root
    files = {sub: set(os.listdir(root / sub)) for sub in ("records", "data", "journal",
                                                          "headers", "staging")}
    records = {n.removesuffix(".json"): (root / "records" / n).read_text()
               for n in files["records"] if n.endswith(".json")}
    return View(records, files, {k.href: lab.owner.consumers(k.secret_id) for k in lab.keys})


def _ids(svc: VolumeService) -> set[str]:
    return {rec.id for rec in svc.pool.list()}


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _opens(path: Path, pw: Sensitive, length: int) -> bytes | None:
    """The first ``length`` plaintext bytes (offline reader), None if ``pw`` opens nothing."""
    try:
        return recovery.read_plaintext(path, pw, length)
    except WrongKey:
        return None


def _cs_opens(path: Path, pw: Sensitive) -> bool:
    """Whether cryptsetup opens a keyslot of ``path`` with ``pw`` (the second reader)."""
    try:
        luks.test_key(path, pw)
    except WrongKey:
        return False
    return True


def check(lab: Lab, v: View, *, ids: set[str], verify: dict[str, bool]) -> list[str]:
    """Problems in the pool as ``v`` shows it (empty: record, disk and Barbican agree).
    ``ids``: every resource id to look for escrow secrets of; ``verify``: the records to open
    and read (the others were checked byte-identical) -> whether the plaintext must be the
    lab's pattern (False: a fresh format, nothing to compare)."""
    bad: list[str] = []
    left = [n for n in v.files["journal"] if not n.endswith((".rotation.json",
                                                              ".reencrypt.json"))]
    if left:
        bad.append(f"intents or temp files left in journal/: {sorted(left)}")
    if v.files["staging"]:
        bad.append(f"staging/ not empty: {sorted(v.files['staging'])}")
    if tmp := [n for n in v.files["records"] if not n.endswith(".json")]:
        bad.append(f"temp files in records/: {tmp}")
    want_files = {f"{rid}.img" for rid in v.records}
    if v.files["data"] != want_files:
        bad.append(f"data/ holds {sorted(v.files['data'] - want_files)} without a record and "
                   f"lacks {sorted(want_files - v.files['data'])}")
    if orphans := [n for n in v.files["headers"] if n[:36] not in v.records]:
        bad.append(f"header backups of no record: {orphans}")
    want_consumers: dict[str, set[tuple[str, str, str]]] = {k.href: set() for k in lab.keys}
    for rid, text in v.records.items():
        rec = json.loads(text)
        if rec["state"] != "available":
            bad.append(f"{rid}: state {rec['state']}")
        want_consumers.setdefault(rec["key_ref"], set()).add((SERVICE, rec["kind"], rid))
        path = lab.svc.pool.path(rid)
        if rid not in verify or not path.exists():
            continue
        got = _opens(path, lab.pw[rec["key_ref"]], len(lab.plain))
        if got is None:
            bad.append(f"{rid}: its recorded key does not open it")
        elif verify[rid] and got != lab.plain:
            bad.append(f"{rid}: WRONG PLAINTEXT under its recorded key")
        for k in lab.keys:
            if k.href != rec["key_ref"] and _cs_opens(path, lab.pw[k.href]):
                bad.append(f"{rid}: another key ({k.secret_id}) opens it")
        slots = len(luks.dump(path).keyslots)  # cryptsetup luksDump's count (LUKS2)
        want_slots = 1 + bool(rec.get("escrow_ref"))
        if slots != want_slots:
            bad.append(f"{rid}: {slots} keyslots, the record accounts for {want_slots}")
        if rec.get("escrow_ref"):
            sid = rec["escrow_ref"].rsplit("/", 1)[1]
            epw = recovery.passphrase_from_key_bytes(lab.service.payload(sid))
            if not _cs_opens(path, epw):
                bad.append(f"{rid}: its recorded escrow secret does not open it")
    for href, want in want_consumers.items():
        if href in v.consumers and v.consumers[href] != want:
            extra, missing = v.consumers[href] - want, want - v.consumers[href]
            bad.append(f"consumers of {href.rsplit('/', 1)[1]}: dangling {sorted(extra)}, "
                       f"missing {sorted(missing)}")
    for rid in ids:
        found = lab.service.named(ESCROW_NAME.format(rid=rid))
        rec = json.loads(v.records[rid]) if rid in v.records else {}
        want = {rec["escrow_ref"].rsplit("/", 1)[1]} if rec.get("escrow_ref") else set()
        if found != want:
            bad.append(f"{rid}: escrow secrets {sorted(found)} in the service project, the "
                       f"record names {sorted(want)}")
    return bad


# --- one crash state ---------------------------------------------------------------------------


@dataclass
class State:
    op: str
    variant: str
    n: int
    torn: int | None
    killed: bool
    outcome: str
    problems: list[str]

    @property
    def key(self) -> str:
        return f"{'crashed' if self.killed else 'finished'}, {self.outcome}"


def run_state(lab: Lab, op: Op, variant: str, n: int, torn: int | None = None) -> State:
    svc = lab.svc
    target = op.prepare(lab) if op.prepare else None
    before = view(lab)
    shas = {rid: _sha(svc.pool.path(rid)) for rid in before.records if rid != target}
    work = lab.work / "fault"
    work.mkdir(exist_ok=True)
    env = ce.fault_env(work, n, exe=None if variant == "tree" else "cryptsetup", torn=torn,
                       tree=variant == "tree", writes_only=variant == "torn",
                       wide=variant != "torn")
    code = run_op(lab, op, target, env)
    crashed = view(lab)
    new = crashed.ids() - before.ids()
    problems: list[str] = []
    where = f"{op.name}/{variant}@{n}" + (f" torn {torn}" if torn else "")
    for rid, sha in shas.items():  # what the operation only reads is byte-identical
        if _sha(svc.pool.path(rid)) != sha or crashed.records.get(rid) != before.records[rid]:
            problems.append(f"input {rid} changed")
    if target is not None and target in crashed.records:
        # The volume under change opens with its key, with its data, in the crashed state.
        got = _opens(svc.pool.path(target), lab.pw[lab.keys[0].href], len(lab.plain))
        if got != lab.plain:
            problems.append(f"the target {'does not open' if got is None else 'reads WRONG'} "
                            "in the crashed state")
    if variant != "tree" and code != 0:
        # byok saw its cryptsetup fail: it must have undone everything itself, at once.
        left = sorted(new) + [n for n in crashed.files["journal"] if n.endswith(
            tuple(f".{i}.json" for i in ("create", "delete", "escrow")))]
        if left:
            problems.append(f"a failed {op.name} left {left} behind")
    svc.resume_interrupted(strict=True)  # the next call
    mid = view(lab)
    outcome = ""
    if op.makes:
        made = set(mid.records) - set(before.records)
        if len(made) > 1:
            problems.append(f"{len(made)} resources made: {sorted(made)}")
        for rid in made:
            rec = json.loads(mid.records[rid])
            if rec["kind"] != op.makes or rec["key_ref"] != _k(lab, op.key):
                problems.append(f"{rid}: a {rec['kind']} under {rec['key_ref']}")
            if bool(rec.get("escrow_ref")) != op.escrow:
                problems.append(f"{rid}: escrow {rec.get('escrow_ref')}")
        outcome = "completed" if made else "rolled back" if new else "not started"
        problems += check(lab, mid, ids=new | set(mid.records),
                          verify={rid: not op.fresh for rid in made})
    else:
        assert target is not None and op.redo is not None
        present = target in mid.records
        problems += check(lab, mid, ids=new | set(mid.records) | {target},
                          verify={target: True})
        done = (not present) if op.name == "delete" else bool(
            present and json.loads(mid.records[target]).get("escrow_ref"))
        if done:
            outcome = "done" if code == 0 else "finished by the next call"
        else:
            op.redo(lab, target)
            outcome = "redone"
            final = view(lab)
            problems += check(lab, final, ids=new | set(final.records) | {target},
                              verify={target: True})
            if op.name == "delete" and target in final.records:
                problems.append("deleted again, still there")
            if op.name == "add-escrow" and not json.loads(final.records[target]).get(
                    "escrow_ref"):
                problems.append("escrow added again, not recorded")
    # Back to the lab's inputs alone.
    for rid in _ids(svc) - (set(before.records) - {target}):
        svc.delete(rid)
    if _ids(svc) != set(before.records) - {target}:
        raise ExperimentError(f"{where}: the lab did not return to its inputs")
    return State(op.name, variant, n, torn, code != 0, outcome,
                 [f"{where}: {p}" for p in problems])


# --- the castellan backend's consumer bookkeeping ----------------------------------------------

#: The flows of the ``byok`` castellan backend that change a key's consumers (what Cinder calls),
#: and whether the volume must be a consumer once the caller's retry has succeeded.
CASTELLAN: dict[str, tuple[str, bool]] = {
    "castellan-bind": ("bind", True),  # first attach: a volume-scoped get binds the volume
    "castellan-share": ("share", True),  # clone_encryption_key: get, then store the same key
    "castellan-delete": ("delete", False),  # the volume's delete: its consumer is released
}
NEIGHBOUR = (SERVICE, "volume", "00000000-0000-4000-8000-00000000000b")


def _castellan_task(lab: Lab, flow: str, vid: str) -> dict[str, Any]:
    return {"kind": "castellan", "flow": flow, "key": lab.ckey.secret_id, "volume": vid}


def _castellan_prepare(lab: Lab, name: str) -> tuple[str, set[tuple[str, str, str]]]:
    """A fresh volume id (bound first for a delete); the consumers the key holds before."""
    import uuid

    api = BarbicanAPI(lab.svc.user, lab.svc.endpoint)
    if NEIGHBOUR not in lab.owner.consumers(lab.ckey.secret_id):
        api.add_consumer(lab.ckey, *NEIGHBOUR)  # another volume's: no flow may touch it
    vid = str(uuid.uuid4())
    if not CASTELLAN[name][1]:
        api.add_consumer(lab.ckey, SERVICE, "volume", vid)
    return vid, lab.owner.consumers(lab.ckey.secret_id)


def run_castellan_state(lab: Lab, name: str, n: int) -> State:
    """One castellan flow killed (the whole tree) at counted call ``n``, then the caller's
    retry; judged by Barbican's consumer list and secret count over plain HTTP."""
    flow, bound_after = CASTELLAN[name]
    vid, before = _castellan_prepare(lab, name)
    mine = (SERVICE, "volume", vid)
    secrets_before = lab.owner.total()
    work = lab.work / "fault"
    env = ce.fault_env(work, n, tree=True, wide=True)
    code = lab.server.run(_castellan_task(lab, flow, vid), env, work / "child.log")
    where = f"{name}/tree@{n}"
    problems: list[str] = []

    def judge(when: str) -> set[tuple[str, str, str]]:
        got = lab.owner.consumers(lab.ckey.secret_id)  # (a 404 if the key is gone: raises)
        if lab.owner.total() != secrets_before:
            problems.append(f"{when}: the user's project holds {lab.owner.total()} secrets, "
                            f"{secrets_before} before (a copy, or a deletion)")
        if stray := got - before - {mine}:
            problems.append(f"{when}: consumers nobody asked for: {sorted(stray)}")
        if lost := (before - {mine}) - got:
            problems.append(f"{when}: other volumes' consumers removed: {sorted(lost)}")
        return got

    crashed = judge("crashed")
    present = mine in crashed
    if code == 0:
        outcome = "done"
        if present != bound_after:
            problems.append("finished (exit 0) with the consumer "
                            f"{'present' if present else 'absent'}")
    else:
        outcome = {(True, True): "consumer already added", (True, False): "consumer not yet added",
                   (False, True): "consumer still there",
                   (False, False): "consumer already removed"}[(bound_after, present)]
        retry = lab.server.run(_castellan_task(lab, flow, vid), {}, work / "child.log")
        if retry != 0:
            tail = (work / "child.log").read_text()[-300:]
            problems.append(f"the caller's retry failed ({retry}): {tail}")
        outcome += ", the retry settled it"
    final = judge("after the retry")
    if (mine in final) != bound_after:
        problems.append(f"the volume's consumer is {'dangling' if mine in final else 'missing'}")
    api = BarbicanAPI(lab.svc.user, lab.svc.endpoint)
    if mine in final:
        api.remove_consumer(lab.ckey, *mine)
    return State(name, "tree", n, None, code != 0, outcome, [f"{where}: {p}" for p in problems])


def probe_castellan(lab: Lab, name: str) -> list[tuple[int, str, int, str]]:
    flow, bound_after = CASTELLAN[name]
    vid, _before = _castellan_prepare(lab, name)
    work = lab.work / "fault"
    work.mkdir(exist_ok=True)
    code = lab.server.run(_castellan_task(lab, flow, vid), ce.fault_env(work, 0, log=True,
                                                                        wide=True),
                          work / "child.log")
    if code:
        raise ExperimentError(f"{name}: the uninterrupted run failed ({code}): "
                              f"{(work / 'child.log').read_text()[-600:]}")
    if ((SERVICE, "volume", vid) in lab.owner.consumers(lab.ckey.secret_id)) != bound_after:
        raise ExperimentError(f"{name}: the uninterrupted run left the consumer wrong")
    if bound_after:
        BarbicanAPI(lab.svc.user, lab.svc.endpoint).remove_consumer(lab.ckey, SERVICE,
                                                                    "volume", vid)
    return ce.calls(work) if (work / "fault.log").exists() else []


# --- enumeration -------------------------------------------------------------------------------


def probe(lab: Lab, op: Op, variant: str) -> list[tuple[int, str, int, str]]:
    """The counted calls of one uninterrupted run (which must succeed and check clean)."""
    svc = lab.svc
    target = op.prepare(lab) if op.prepare else None
    before = _ids(svc)
    work = lab.work / "fault"
    work.mkdir(exist_ok=True)
    env = ce.fault_env(work, 0, exe=None if variant == "tree" else "cryptsetup", log=True,
                       writes_only=variant == "torn", wide=variant != "torn")
    code = run_op(lab, op, target, env)
    if code:
        log = (lab.work / "fault" / "child.log").read_text()[-600:]
        raise ExperimentError(f"{op.name}: the uninterrupted run failed ({code}): {log}")
    calls = ce.calls(work) if (work / "fault.log").exists() else []
    for rid in _ids(svc) - (before - {target}):
        svc.delete(rid)
    return calls


def pick(calls: list[tuple[int, str, int, str]], variant: str, sample: int | None,
         rng: random.Random) -> list[tuple[int, int | None]]:
    """(call number, torn bytes) to inject: all (``sample`` None) or a sample that takes half
    from the sends (each a request to the key service) and half from the rest, evenly spaced
    from a random start."""
    if variant == "torn":
        big = [(n, size) for n, kind, size, _exe in calls if kind == "write" and size >= 4096]
        if sample is not None:
            big = _spread(big, max(1, sample // 2), rng)
        return [(n, cut) for n, size in big for cut in ce.tear_points(size, (0.3, 0.7))]
    ns = [c[0] for c in calls] + [calls[-1][0] + 1 if calls else 1]  # and after the last
    if sample is None or len(ns) <= sample:
        return [(n, None) for n in ns]
    sends = [c[0] for c in calls if c[1].startswith("send")]
    rest = [n for n in ns if n not in set(sends)]
    k = min(len(sends), sample // 2)
    return sorted((n, None) for n in _spread(sends, k, rng) + _spread(rest, sample - k, rng))


def _spread(items: list, k: int, rng: random.Random) -> list:
    if k <= 0 or not items:
        return []
    if k >= len(items):
        return list(items)
    step = len(items) / k
    start = rng.random() * step
    return [items[int(start + i * step)] for i in range(k)]


@dataclass
class Tally:
    op: str
    variant: str
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return sum(self.outcomes.values())

    def add(self, st: State) -> None:
        self.outcomes[st.key] = self.outcomes.get(st.key, 0) + 1
        self.problems += st.problems

    def as_dict(self) -> dict:
        return {"calls": self.calls, "tried": self.tried, "outcomes": self.outcomes,
                "problems": self.problems}


def enumerate_op(lab: Lab, name: str, variant: str, *, sample: int | None = None,
                 seed: int = 0, on_state: Callable[[State], None] | None = None) -> Tally:
    """Kill ``name`` at every counted call (``sample``: that many, spread) and judge each."""
    castellan = name in CASTELLAN
    op = None if castellan else OPS[name]
    calls = probe_castellan(lab, name) if castellan else probe(lab, OPS[name], variant)
    tally = Tally(name, variant, calls=len(calls))
    for n, torn in pick(calls, variant, sample, random.Random(f"{seed}/{name}/{variant}")):
        st = (run_castellan_state(lab, name, n) if op is None
              else run_state(lab, op, variant, n, torn))
        tally.add(st)
        if on_state:
            on_state(st)
    return tally


__all__ = ["CASTELLAN", "OPS", "Lab", "Op", "State", "Tally", "build_lab", "check",
           "enumerate_op", "pick", "probe", "probe_castellan", "run_castellan_state", "run_state",
           "view"]
