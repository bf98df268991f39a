"""Experiments are declarations (issue 14, item 5): each file says its hypothesis, steps and
checks through the harness's verbs and imports nothing else of byok — no product layer, no
castellan or os-brick — so what an experiment claims can be read without reading byok.

Allowed: the standard library, ``byok.harness`` (and its modules), ``byok.common.errors`` (the
error types a step expects) and ``byok.common.pattern`` (the data a step writes and checks).
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ALLOWED_BYOK = ("byok.harness", "byok.common.errors", "byok.common.pattern")
#: Files not yet held to the rule, each with why. Cinder-variant experiments (``e03c_*`` ...)
#: arrive from another branch written against the product modules; the lead converts them after
#: the merge and then deletes this entry.
NOT_YET = {"e[0-9][0-9][a-z]_*.py": "Cinder-variant experiments, converted after their merge"}


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (at any depth, lazy imports in functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: experiments are loaded by path, never as a package
                found.append(("." * node.level + (node.module or ""), node.lineno))
            elif node.module == "byok":  # from byok import luks
                found += [(f"byok.{a.name}", node.lineno) for a in node.names]
            elif node.module:
                found.append((node.module, node.lineno))
    return found


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == "byok":
        return any(module == a or module.startswith(a + ".") for a in ALLOWED_BYOK)
    return bool(top) and (top == "__future__" or top in sys.stdlib_module_names)


def violations(path: Path) -> list[str]:
    return [f"line {line}: imports {m}" for m, line in imports(path) if not allowed(m)]


def _held(path: Path) -> bool:
    return not any(fnmatch.fnmatch(path.name, pat) for pat in NOT_YET)


FILES = sorted(EXPERIMENTS.glob("e[0-9]*.py"))  # what the registry discovers


def test_every_experiment_file_is_seen():
    names = {p.name.split("_")[0] for p in FILES}
    assert {f"e{i:02d}" for i in range(1, 17)} <= names


@pytest.mark.parametrize("path", [p for p in FILES if _held(p)], ids=lambda p: p.stem)
def test_experiment_imports_only_the_harness(path):
    assert violations(path) == [], (
        f"{path.name} reaches past the harness: {violations(path)}; give the harness a verb "
        "(byok/harness/verbs/) and call it on ctx")


def test_the_grace_list_never_covers_the_core_experiments():
    core = [p.name for p in FILES if p.name.split("_")[0] in {f"e{i:02d}" for i in range(1, 17)}]
    assert len(core) >= 16 and all(_held(EXPERIMENTS / name) for name in core)


def test_the_rule_can_fail(tmp_path):
    bad = tmp_path / "e99_probe.py"
    bad.write_text(
        "import os\n"
        "from castellan import key_manager\n"
        "from byok.harness import experiment\n"
        "from byok.common.errors import WrongKey\n"
        "from byok import luks\n"
        "def run(ctx):\n"
        "    from byok.keys import resolver\n"
        "    import byok.common.proc\n")
    assert violations(bad) == ["line 2: imports castellan", "line 5: imports byok.luks",
                               "line 7: imports byok.keys", "line 8: imports byok.common.proc"]
