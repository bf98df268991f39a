"""The core spec's Work Items name exactly the functions the patch series changes, method by
method: the series applied one patch at a time to the unpatched Cinder 29 / Nova 34 sdists
(downloaded by ``./dev openstack``), each changed line located in the code with ``ast``.

Needs only the sdists, not the tier's venv or the stack; the patch-only (top-level) check runs
in the unit tier (tests/unit/test_specs.py).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from byok.harness import workitems

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("BYOK_OPENSTACK_VENV", ROOT / ".venv-openstack"))
SDISTS = {"cinder": "cinder-29.0.0", "nova": "nova-34.0.0"}


def _tree(project: str, dest: Path) -> Path:
    tarball = VENV / "sdists" / f"{SDISTS[project]}.tar.gz"
    if not tarball.exists():
        pytest.fail(f"{tarball} is missing: run ./dev openstack (it downloads the sdists)")
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / SDISTS[project]


def test_work_items_name_every_changed_function_exactly(tmp_path):
    per_patch: dict[str, set[tuple[str, str]]] = {}
    for project, patches in workitems.series(ROOT / "openstack").items():
        tree = _tree(project, tmp_path / "sdists")
        per_patch |= workitems.exact_sites(patches, tree, tmp_path / f"work-{project}")
    series = workitems.from_series(ROOT / "openstack", per_patch)
    table = workitems.expand(workitems.rows((ROOT / "design" / "user-supplied-keys.rst")
                                            .read_text()))
    assert not series - table, f"changed in the series, not in the spec: {sorted(series - table)}"
    assert not table - series, f"in the spec, not changed by the series: {sorted(table - series)}"


def test_work_items_table_is_generated_from_the_series(tmp_path):
    """The table text itself is what :func:`workitems.render` makes of the series' exact call
    sites and the spec's own change column: regenerate it after a patch changes."""
    per_patch: dict[str, set[tuple[str, str]]] = {}
    for project, patches in workitems.series(ROOT / "openstack").items():
        tree = _tree(project, tmp_path / "sdists")
        per_patch |= workitems.exact_sites(patches, tree, tmp_path / f"work-{project}")
    text = (ROOT / "design" / "user-supplied-keys.rst").read_text()
    changes = {(r.patch, r.path): r.change for r in workitems.rows(text)}
    table = workitems.render(workitems.from_series(ROOT / "openstack", per_patch), changes)
    assert table == workitems.table_text(text)
