"""The archived exhaustive lifecycle crash run that E09 and E10 cite exists, covers every
operation and variant the enumeration knows, tried every counted call of each, and found no
problem — so a citation cannot point at a missing, partial or failed run."""

from __future__ import annotations

import re
from pathlib import Path

from byok.harness import opcrash
from byok.harness.verbs.base import VerbBase

ROOT = Path(__file__).resolve().parents[2]


def _cited(exp: str) -> str:
    text = next((ROOT / "experiments").glob(f"{exp}_*.py")).read_text()
    m = re.search(r'^LIFECYCLE_EVIDENCE = "([^"]+)"', text, re.M)
    assert m, f"{exp} names no LIFECYCLE_EVIDENCE"
    return m.group(1)


def test_e09_and_e10_cite_one_complete_archived_run_with_no_problem():
    name = _cited("e09")
    assert _cited("e10") == name
    doc = VerbBase().archived_evidence(name)["crash-lifecycle"]
    want = {(op, v) for op, o in opcrash.OPS.items() for v in o.variants}
    want |= {(op, "tree") for op in opcrash.CASTELLAN}
    got = {(op, v) for op, vs in doc["operations"].items() for v in vs}
    assert got == want
    for op, vs in doc["operations"].items():
        for v, rec in vs.items():
            # every counted call (and once after the last; torn: two cuts per write)
            assert rec["tried"] == (2 * rec["calls"] if v == "torn" else rec["calls"] + 1), (op, v)
            assert rec["problems"] == []
    assert doc["totals"]["tried"] == sum(r["tried"] for vs in doc["operations"].values()
                                         for r in vs.values())
    assert doc["totals"]["problems"] == 0
    ev = VerbBase().lifecycle_crash_evidence(name)
    assert ev["tried"] == doc["totals"]["tried"] and ev["problems"] == 0


def test_the_archive_holds_a_passed_full_run_of_rotation_reencryption_and_header_restore():
    rot = VerbBase().archived_evidence(_cited("e09"))["rotation-enumeration"]
    assert rot["exitstatus"] == 0 and rot["target_met"]
    got = {(op, v) for op, vs in rot["operations"].items() for v in vs}
    assert got == {("reencrypt", "tree"), ("reencrypt", "cryptsetup"), ("reencrypt", "torn"),
                   ("rotate", "tree"), ("header-restore", "tree")}
    for op, vs in rot["operations"].items():
        for v, rec in vs.items():
            assert sum(rec["outcomes"].values()) == rec["tried"] > 0, (op, v)
            if v != "torn":  # every write-type call was a crash state
                assert rec["tried"] == rec["calls"], (op, v)
