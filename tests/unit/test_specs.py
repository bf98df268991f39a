"""The specs in design/ (issue 17): the core Cinder spec, its two follow-ups and the nova-spec
build as cinder-specs' and nova-specs' gates build them — ``doc8`` (79 columns) and
``sphinx-build -W`` — and the core spec's Work Items are exactly the patch series' call sites.

The Work Items check here reads the patches alone (top-level function of each change); the
method-level check, which needs the unpatched sdists, is in tests/openstack/test_work_items.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from byok.harness import results, spec, workitems

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "design"
CORE = DESIGN / "user-supplied-keys.rst"
FOLLOW_UPS = [DESIGN / "user-supplied-keys-rotation.rst",
              DESIGN / "user-supplied-keys-recovery.rst"]
NOVA = DESIGN / "nova-user-supplied-keys.rst"
SPECS = [CORE, *FOLLOW_UPS, NOVA]
EVIDENCE_RUN = DESIGN / "evidence" / "20261202T003136-5b01"  # with the Cinder variants


def _doc8(paths: list[Path]) -> str:
    try:
        from doc8 import doc8
    except ImportError:
        pytest.fail("doc8 is missing: run ./dev setup (it is in the test extras)")
    result = doc8(paths=[str(p) for p in paths], max_line_length=79, quiet=True)
    return result.report() if result.total_errors else ""


def _sphinx(src_files: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    """sphinx-build -W -b html over ``src_files`` (a toctree index names them all)."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for f in src_files:
        shutil.copy(f, src / f.name)
    toc = "\n".join(f"   {f.stem}" for f in src_files)
    (src / "index.rst").write_text(f"Specs\n=====\n\n.. toctree::\n   :maxdepth: 1\n\n{toc}\n")
    (src / "conf.py").write_text("project = 'byok specs'\nexclude_patterns = []\n")
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", str(src), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=300)


def test_the_core_spec_its_follow_ups_and_the_nova_spec_exist():
    missing = [p.name for p in SPECS if not p.exists()]
    assert not missing, f"missing specs in design/: {missing}"
    core = CORE.read_text()
    for f in [*FOLLOW_UPS, NOVA]:
        assert f.name in core, f"the core spec does not reference {f.name}"


def test_doc8_79_columns_as_cinder_specs_gate():
    assert _doc8(SPECS) == ""


def test_sphinx_build_W_over_every_spec(tmp_path):
    proc = _sphinx(sorted(DESIGN.glob("*.rst")), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] or proc.stdout[-4000:]


def test_evidence_blocks_are_the_archived_run():
    """Every evidence block in design/*.rst is exactly what the archived run regenerates:
    no number in a block was typed or left from an older run."""
    res = results.load_run(EVIDENCE_RUN)
    run_id = EVIDENCE_RUN.name
    stale = [f.name for f in SPECS if spec.inject(f, res, run_id)[0] != f.read_text()]
    assert not stale, f"regenerate from {EVIDENCE_RUN}: byok report {EVIDENCE_RUN} --spec FILE"


def test_regenerated_evidence_blocks_stay_within_79_columns(tmp_path):
    """Blocks regenerated from a real run wrap at 79 columns too (long text values become a
    list) — the generator, not a hand edit, keeps doc8 green; an older run too."""
    res = results.load_run(DESIGN / "evidence" / "20261201T102737-9588")
    out = []
    for f in SPECS:
        copy = tmp_path / f.name
        copy.write_text(f.read_text())
        spec.update(copy, res, "20261201T102737-9588")
        out.append(copy)
    assert _doc8(out) == ""
    proc = _sphinx(out, tmp_path / "build")
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_core_work_items_are_the_patch_series():
    """Every (patch, file, top-level function) the series changes has a row, and every row
    names a change the series makes: the table and the patches cannot drift apart."""
    rows = workitems.rows(CORE.read_text())
    assert rows, "no work items"
    table = workitems.expand(rows)
    series = workitems.from_series(ROOT / "openstack")
    missing = workitems.top(series) - workitems.top(table)
    extra = workitems.top(table) - workitems.top(series)
    assert not missing, f"call sites in the patches without a work item: {sorted(missing)}"
    assert not extra, f"work items no patch touches: {sorted(extra)}"
    labels = {r.patch for r in rows}
    files = {(r.patch, r.path) for r in rows}
    assert files == {(p, f) for p, f, _ in series}
    assert labels == {workitems.patch_label(proj, p)
                      for proj, ps in workitems.series(ROOT / "openstack").items() for p in ps}


def test_work_items_parser_sees_a_drift(tmp_path):
    """The check can fail: a row for a function the patch does not touch is extra."""
    rows = workitems.rows(CORE.read_text())
    forged = workitems.Row(rows[0].patch, rows[0].file, "not_in_any_patch", "x")
    table = workitems.top(workitems.expand([*rows, forged]))
    assert table - workitems.top(workitems.from_series(ROOT / "openstack"))
