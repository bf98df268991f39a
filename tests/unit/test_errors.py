"""The one error tree: every kind has its own exit code, every raise names a concrete kind, the
README's table is the code's table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from byok.cli import exit_code_table
from byok.common import errors

ROOT = Path(__file__).resolve().parents[2]


def test_every_kind_has_its_own_exit_code():
    rows = errors.exit_codes()
    codes = [code for code, _, _ in rows]
    assert len(codes) == len(set(codes)), rows
    assert all(0 <= c < 126 for c in codes)  # 126+ mean "not executable" / signals to a shell


def test_every_error_class_lives_in_the_one_tree():
    """No exception class is defined outside byok/common/errors.py (the guest supervisor and
    private control-flow helpers excepted by name)."""
    # private signals that never leave their module: the Barbican client's retry signal, the
    # executor's timeout signal (run() turns it into CommandTimeout)
    allowed = {"_Transient", "_TimedOut"}
    ours = {c.__name__ for c in errors._all(errors.ByokError)}
    found = []
    for path in (ROOT / "byok").rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "common":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name not in allowed and any(
                    ast.unparse(b).rsplit(".", 1)[-1] in ours
                    or re.search(r"(Error|Exception)$", ast.unparse(b)) for b in node.bases):
                found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == []


def test_no_raise_of_the_base_or_an_intermediate_kind():
    abstract = {c.__name__ for c in (errors.ByokError, *errors.ABSTRACT)}
    found = []
    for path in [*(ROOT / "byok").rglob("*.py"), *(ROOT / "experiments").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = ast.unparse(node.exc.func).rsplit(".", 1)[-1]
                if name in abstract:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert found == []


def test_the_readme_prints_the_code_table():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- exit-codes -->\n", 1)[1].split("\n<!-- end-exit-codes -->", 1)[0]
    assert block == exit_code_table()
