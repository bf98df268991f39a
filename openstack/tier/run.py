"""The openstack tier: apply the patch series to Cinder 29 / Nova 34 and run their own tests.

Runs inside ``.venv-openstack`` (``./dev openstack`` builds it); ``tests/openstack`` drives it
from the main test suite. Subcommands, each printing its counts and writing a JSON summary:

* ``prepare``: unpack the sdists that ``./dev openstack`` downloaded into fresh unpatched and
  patched trees under ``.byok/openstack/`` and apply ``openstack/<project>/*.patch`` with GNU
  ``patch`` (dry run first, no fuzz: a hunk that does not apply stops everything).
* ``unit``: Cinder's own unit tests with stestr for the key-related modules plus every test
  module the series touches, in the unpatched and the patched tree, same module list.
* ``functional``: the Cinder functional tests of ``openstack/tier/cinder_functional.py`` (real
  Keystone tokens, real Barbican) in the patched tree, once per castellan backend.
* ``nova``: ``openstack/tier/nova_functional.py`` in the patched Nova tree.
* ``tree --dest DIR``: a patched Cinder tree for ``byok cinder up`` (its services run from it),
  rebuilt only when the sdist or the series changed.

Why trees and not site-packages: the series is against the sdist, and the wheel lacks what the
tests need (``etc/cinder/api-paste.ini``, ``resource_filters.json``); both trees run from the
sdist's own layout, so nothing is hand-copied. The installed wheels provide the dependencies
and entry points.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

TIER = Path(__file__).resolve().parent
OPENSTACK = TIER.parent
ROOT = OPENSTACK.parent
VENV = Path(os.environ.get("BYOK_OPENSTACK_VENV", ROOT / ".venv-openstack"))
SDISTS = VENV / "sdists"
WORK = Path(os.environ.get("BYOK_OPENSTACK_WORK", ROOT / ".byok" / "openstack"))
PROJECTS = {"cinder": "cinder-29.0.0", "nova": "nova-34.0.0"}
BIN = VENV / "bin"

# What "key-related" means (the same rule that found Cinder 29's 33 modules).
KEY_PATTERN = re.compile(
    r"create_encryption_key|clone_encryption_key|delete_encryption_key|key_manager"
    r"|encryption_key_id")

SELECTION_INIT = '''"""Discovery root for an explicit module list (openstack/tier/run.py).

stestr discovers from a directory; discovering all of cinder/tests/unit imports ~19,000 tests
and modules whose optional dependencies (moto) are not installed. This package's load_tests
loads exactly the modules named in $BYOK_TEST_MODULES instead.
"""
import os


def load_tests(loader, standard_tests, pattern):
    # Cinder: import novaclient (through cinder.compute.nova) before any test runs. Some tests
    # mock os.path.exists/open, and a first import of novaclient under such a mock makes gettext
    # look for a catalogue that is not there (FileNotFoundError in whichever test came next).
    for name in filter(None, os.environ.get("BYOK_TEST_PREIMPORT", "").split(",")):
        __import__(name)
    names = [n.strip() for n in open(os.environ["BYOK_TEST_MODULES"]) if n.strip()]
    standard_tests.addTests(loader.loadTestsFromNames(names))
    return standard_tests
'''


def log(msg: str) -> None:
    print(f"[openstack] {msg}", flush=True)


class TierError(RuntimeError):
    pass


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, text=True, **kw)


# -- trees ---------------------------------------------------------------------------------------
def sdist(project: str) -> Path:
    path = SDISTS / f"{PROJECTS[project]}.tar.gz"
    if not path.exists():
        raise TierError(f"{path} is missing: run ./dev openstack (it downloads the sdists)")
    return path


def patches(project: str) -> list[Path]:
    found = sorted((OPENSTACK / project).glob("*.patch"))
    if not found:
        raise TierError(f"no patches in {OPENSTACK / project}")
    return found


def unpack(project: str, dest: Path) -> Path:
    """A fresh tree of the sdist at ``dest`` (owned by us, not by the tarball's uid)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / (dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with tarfile.open(sdist(project)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / PROJECTS[project]).rename(dest)
    tmp.rmdir()
    return dest


def apply_series(project: str, tree: Path) -> list[str]:
    """Apply every patch with GNU patch, strictly: a dry run first, no fuzz, no reversal."""
    applied = []
    for p in patches(project):
        args = ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch",
                "-d", str(tree), "-i", str(p)]
        dry = run([*args, "--dry-run"], capture_output=True)
        if dry.returncode != 0:
            raise TierError(f"{p.name} does not apply to {PROJECTS[project]}:\n{dry.stdout}"
                            f"{dry.stderr}")
        real = run(args, capture_output=True)
        if real.returncode != 0:
            raise TierError(f"{p.name} failed to apply:\n{real.stdout}{real.stderr}")
        applied.append(p.name)
    return applied


def prepare(project: str) -> dict:
    t0 = time.monotonic()
    unpatched = unpack(project, WORK / f"{project}-unpatched")
    patched = unpack(project, WORK / f"{project}-patched")
    applied = apply_series(project, patched)
    for name in applied:
        log(f"{project}: applied {name}")
    return {"project": project, "unpatched": str(unpatched), "patched": str(patched),
            "patches": applied, "seconds": round(time.monotonic() - t0, 1)}


def series_stamp(project: str) -> str:
    import hashlib

    h = hashlib.sha256(sdist(project).name.encode())
    for p in patches(project):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def tree(project: str, dest: Path) -> dict:
    """The patched tree at ``dest``, reused if it was made from the same sdist and series."""
    stamp_file = dest / ".byok-series"
    want = series_stamp(project)
    if stamp_file.exists() and stamp_file.read_text() == want:
        return {"tree": str(dest), "rebuilt": False, "stamp": want}
    unpack(project, dest)
    applied = apply_series(project, dest)
    stamp_file.write_text(want)
    log(f"{project}: patched tree at {dest} ({len(applied)} patches)")
    return {"tree": str(dest), "rebuilt": True, "stamp": want, "patches": applied}


# -- module selection ----------------------------------------------------------------------------
def key_modules(tree: Path) -> list[str]:
    found = []
    for path in sorted((tree / "cinder" / "tests" / "unit").rglob("test_*.py")):
        if KEY_PATTERN.search(path.read_text(errors="replace")):
            found.append(path)
    return [module_name(tree, p) for p in found]


def module_name(tree: Path, path: Path) -> str:
    return ".".join(path.relative_to(tree).with_suffix("").parts)


def touched_test_modules(project: str, prefix: str) -> list[str]:
    mods = set()
    for p in patches(project):
        for line in p.read_text().splitlines():
            m = re.match(r"^\+\+\+ b/(\S+\.py)$", line)
            if m and m.group(1).startswith(prefix) and Path(m.group(1)).name.startswith("test_"):
                mods.add(m.group(1)[:-3].replace("/", "."))
    return sorted(mods)


# -- stestr --------------------------------------------------------------------------------------
def fake_paths() -> set[str]:
    """Paths at the filesystem root that some Cinder tests create when run as root."""
    return set(glob.glob("/fake*"))


def clean_fake_leftovers() -> list[str]:
    """Remove /fake* trees an earlier (interrupted) run left: only trees of empty
    directories, which is all those tests create; anything holding a file is kept."""
    removed = []
    for path in sorted(fake_paths()):
        if os.path.isdir(path) and not os.path.islink(path) and not any(
                files for _root, _dirs, files in os.walk(path)):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def stestr(tree: Path, modules: list[str], *, label: str, workers: int, env=None,
           clean: bool = True) -> dict:
    """Run ``modules`` with stestr in ``tree``; each label has its own selection package,
    config and repository, so runs in one tree do not disturb each other."""
    ident = re.sub(r"\W", "_", label)
    sel = tree / f"byok_sel_{ident}"
    sel.mkdir(exist_ok=True)
    (sel / "__init__.py").write_text(SELECTION_INIT)
    listing = WORK / f"{label}.modules"
    listing.write_text("\n".join(modules) + "\n")
    conf = WORK / f"{label}.stestr.conf"
    conf.write_text(f"[DEFAULT]\ntest_path=./{sel.name}\ntop_dir=./\n")
    repo = WORK / f"{label}.stestr"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    environ = dict(os.environ, BYOK_TEST_MODULES=str(listing), PYTHONDONTWRITEBYTECODE="1",
                   OS_STDOUT_CAPTURE="1", OS_STDERR_CAPTURE="1", OS_LOG_CAPTURE="1",
                   **(env or {}))
    leftovers = clean_fake_leftovers() if clean else []
    before = fake_paths()
    t0 = time.monotonic()
    out = WORK / f"{label}.log"
    with open(out, "w") as f:
        proc = subprocess.run(
            [str(BIN / "stestr"), "--config", str(conf), "--repo-url", str(repo), "run",
             "--concurrency", str(workers), "--subunit"],
            cwd=tree, env=environ, stdout=subprocess.PIPE, stderr=f, check=False)
    seconds = time.monotonic() - t0
    created = sorted((fake_paths() - before) | set(leftovers)) if clean else []
    for path in created:  # root-only quirk: tests that write under /fake*; clean, not skip
        shutil.rmtree(path, ignore_errors=True)
    result = parse_subunit(proc.stdout)
    result.update(label=label, seconds=round(seconds, 1), workers=workers,
                  modules=len(modules), cleaned=created, stestr_rc=proc.returncode)
    if result["passed"] + result["failed"] == 0:
        raise TierError(f"{label}: stestr ran no test (rc {proc.returncode}); see {out}")
    return result


def parse_subunit(data: bytes) -> dict:
    import io

    import subunit
    import testtools

    results: dict[str, str] = {}
    details: dict[str, str] = {}

    def on_test(test: dict) -> None:
        status = test["status"]
        if status in ("success", "xfail"):
            results[test["id"]] = "passed"
        elif status == "skip":
            results[test["id"]] = "skipped"
        elif status in ("fail", "uxsuccess"):
            results[test["id"]] = "failed"
            tb = test["details"].get("traceback")
            details[test["id"]] = tb.as_text()[-3000:] if tb else ""

    stream = subunit.ByteStreamToStreamResult(io.BytesIO(data), non_subunit_name="stdout")
    sink = testtools.StreamToDict(on_test)
    sink.startTestRun()
    stream.run(sink)
    sink.stopTestRun()
    counts = {k: sum(1 for v in results.values() if v == k)
              for k in ("passed", "failed", "skipped")}
    return {**counts, "failures": sorted(t for t, v in results.items() if v == "failed"),
            "tests": sorted(results), "tracebacks": details}


def unit(workers: int) -> dict:
    unpatched, patched = WORK / "cinder-unpatched", WORK / "cinder-patched"
    if not patched.exists():
        raise TierError("run prepare first")
    modules = sorted(set(key_modules(unpatched)) |
                     set(touched_test_modules("cinder", "cinder/tests/unit/")))
    log(f"cinder unit: {len(modules)} modules ({len(key_modules(unpatched))} key-related + "
        "those the series touches), unpatched and patched side by side")
    existing = {m for m in modules
                if (unpatched / (m.replace(".", "/") + ".py")).exists()}
    env = {"BYOK_TEST_PREIMPORT": "cinder.compute.nova"}
    # Both trees at once: the runs are independent, and on this machine a single stestr
    # run leaves a core idle about half the time (sqlite and file I/O between tests).
    from concurrent.futures import ThreadPoolExecutor

    # The /fake* quirk is cleaned once around both runs, not by either while the other runs.
    leftovers = clean_fake_leftovers()
    before = fake_paths()
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        fut_base = pool.submit(stestr, unpatched, sorted(existing),
                               label="cinder-unit-unpatched", workers=workers, env=env,
                               clean=False)
        fut_new = pool.submit(stestr, patched, modules, label="cinder-unit-patched",
                              workers=workers, env=env, clean=False)
        base, new = fut_base.result(), fut_new.result()
    cleaned = sorted((fake_paths() - before) | set(leftovers))
    for path in cleaned:  # root-only quirk: tests that write under /fake*; clean, not skip
        shutil.rmtree(path, ignore_errors=True)
    base["cleaned"] = new["cleaned"] = cleaned
    wall = round(time.monotonic() - t0, 1)
    new_failures = sorted(set(new["failures"]) - set(base["failures"]))
    flaky = []
    if new_failures:
        # Some Cinder tests sleep against a periodic task (test_rbd's deferred deletion: a
        # 1 s loop checked after 1.2 s) and fail on a busy machine. A failure that only the
        # patched tree showed is run again alone; passing then, it is reported as flaky.
        again = stestr(patched, new_failures, label="cinder-unit-patched-rerun", workers=1,
                       env=env)
        flaky = sorted(set(new_failures) - set(again["failures"]))
        new_failures = sorted(set(new_failures) & set(again["failures"]))
        for t in flaky:
            log(f"  flaky (failed side by side, passed alone): {t}")
    missing = sorted(set(base["tests"]) - set(new["tests"]))
    summary = {"modules": modules, "unpatched": strip(base), "patched": strip(new),
               "new_failures": new_failures, "new_failure_tracebacks":
               {t: new["tracebacks"].get(t, "") for t in new_failures},
               "tests_missing_in_patched": missing,
               "tests_added_by_series": len(set(new["tests"]) - set(base["tests"])),
               "wall_seconds": wall, "flaky_passed_on_rerun": flaky}
    for name, r in (("unpatched", base), ("patched", new)):
        log(f"cinder unit ({name}): {r['passed']} passed, {r['failed']} failed, "
            f"{r['skipped']} skipped in {r['seconds']} s ({r['workers']} workers)"
            + (f"; cleaned {', '.join(r['cleaned'])}" if r["cleaned"] else ""))
    for t in sorted(set(base["failures"]) & set(new["failures"])):
        log(f"  fails in both trees (not the series): {t}")
    log(f"cinder unit: both trees in {wall} s wall; "
        f"{summary['tests_added_by_series']} tests added by the series, "
        f"{len(new_failures)} new failures, {len(missing)} tests missing")
    for t in new_failures:
        log(f"  NEW FAILURE: {t}")
    return summary


def strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("tests", "tracebacks")}


# -- functional ----------------------------------------------------------------------------------
def functional(project: str, module: str, label: str, env: dict, workers: int = 1) -> dict:
    tree = WORK / f"{project}-patched"
    if not tree.exists():
        raise TierError("run prepare first")
    records = WORK / f"{label}.records.jsonl"
    records.unlink(missing_ok=True)
    environ = {"PYTHONPATH": str(TIER), "BYOK_OS_RECORDS": str(records), **env}
    result = stestr(tree, [module], label=label, workers=workers, env=environ)
    found = ([json.loads(line) for line in records.read_text().splitlines()]
             if records.exists() else [])
    for rec in found:
        log(f"  {label} record: {json.dumps(rec, sort_keys=True)}")
    log(f"{label}: {result['passed']} passed, {result['failed']} failed, "
        f"{result['skipped']} skipped in {result['seconds']} s")
    for t in result["failures"]:
        log(f"  FAILED: {t}")
    return {**strip(result), "tracebacks": result["tracebacks"], "records": found}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["prepare", "unit", "functional", "nova", "tree"])
    ap.add_argument("--dest", type=Path, help="where the patched tree goes (tree)")
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="byok", help="castellan backend (functional)")
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "prepare":
            summary = {p: prepare(p) for p in PROJECTS}
        elif args.what == "tree":
            if not args.dest:
                raise TierError("tree needs --dest DIR")
            summary = tree("cinder", args.dest.resolve())
        elif args.what == "unit":
            summary = unit(args.workers)
        elif args.what == "functional":
            summary = functional("cinder", "cinder_functional", f"cinder-functional-{args.backend}",
                                 {"BYOK_OS_BACKEND": args.backend})
        else:
            summary = functional("nova", "nova_functional", f"nova-attach-encryptor-{args.backend}",
                                 {"BYOK_OS_BACKEND": args.backend})
    except TierError as e:
        print(f"[openstack] error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
