"""The architecture, enforced: each package imports only the layers below it (DESIGN.md).

cli -> bench -> harness -> stack / lifecycle -> attach -> keys, key_manager, luks, guest -> common.
The key path knows nothing of LUKS, the LUKS layer sees passphrases and never key references,
no product package knows the embedded stack, the harness, the benchmarks or the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "byok"
ALLOWED = {
    "common": set(),
    "keys": {"common"},
    "key_manager": {"common", "keys"},
    "luks": {"common", "_xtsfast"},
    "guest": {"common"},
    "attach": {"common", "keys", "luks", "guest"},
    "lifecycle": {"common", "keys", "key_manager", "luks", "guest", "attach"},
    "stack": {"common", "keys"},
    "harness": {"common", "keys", "key_manager", "luks", "guest", "attach", "lifecycle",
                "stack"},
    "bench": {"common", "keys", "key_manager", "luks", "guest", "attach", "lifecycle", "stack",
              "harness"},
    "cli": {"common", "keys", "key_manager", "luks", "guest", "attach", "lifecycle", "stack",
            "harness", "bench"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py")


def imported_layers(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "byok":
            names = [node.module]
            if node.module == "byok":
                names = [f"byok.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "byok"]
        for name in names:
            parts = name.split(".")
            if len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT or p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    layer = layer_of(path)
    assert layer in ALLOWED, f"{path.relative_to(ROOT)} is outside every layer package"
    bad = [f"line {line}: imports byok.{dep}" for dep, line in sorted(imported_layers(path))
           if dep != layer and dep not in ALLOWED[layer]]
    assert bad == [], f"{path.relative_to(ROOT)} ({layer}) breaks the layer rule: {bad}"


def test_the_tree_is_the_layers():
    """No flat modules beside the packages (byok/__init__.py aside)."""
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert flat == []
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(ALLOWED)


def test_the_rule_can_fail(tmp_path):
    """The checker sees a violation when there is one (a luks module importing the key path)."""
    bad = ROOT / "luks" / "_layer_probe.py"
    try:
        bad.write_text("from byok.keys import resolver\n")
        layer = layer_of(bad)
        deps = {d for d, _ in imported_layers(bad)}
        assert layer == "luks" and "keys" in deps and "keys" not in ALLOWED[layer]
    finally:
        bad.unlink()
