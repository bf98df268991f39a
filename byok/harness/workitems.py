"""The spec's Work Items are the patch series: parse ``openstack/*/*.patch`` into call sites
(patch, file, function) so a test can hold the spec's table to them (issue 17).

Two readings of a patch. :func:`sites` needs only the patch: the function of a change is the
top-level ``def``/``class`` git names in the hunk header (or that the hunk shows), plus the
method when its ``def`` line is inside the hunk. :func:`exact_sites` also takes the tree the
patch applies to and names the innermost enclosing function of every changed line (``ast``),
after applying the series up to that patch (GNU patch, as the openstack tier does).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "(module)"
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@ ?(.*)$")
DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")


@dataclass
class Hunk:
    old_start: int
    new_start: int
    header: str
    lines: list[str] = field(default_factory=list)  # with their ' ', '+', '-' marker

    def changes(self) -> list[tuple[int, str]]:
        """(new-file line number, text) of every added line, and of every removed line (at the
        new-file line it sat before)."""
        out, n = [], self.new_start
        for ln in self.lines:
            mark, text = ln[:1], ln[1:]
            if mark == "+":
                out.append((n, text))
                n += 1
            elif mark == "-":
                out.append((n, text))
            elif mark == " ":
                n += 1
        return out


@dataclass
class FileDiff:
    path: str
    hunks: list[Hunk] = field(default_factory=list)


@dataclass
class Patch:
    name: str  # the file name, e.g. 0003-Accept-a-user-owned-...patch
    subject: str
    files: list[FileDiff] = field(default_factory=list)


def parse(path: Path) -> Patch:
    """A ``git format-patch`` file: its subject and the hunks of every file."""
    text = path.read_text()
    subject = ""
    m = re.search(r"^Subject: (?:\[PATCH[^\]]*\] )?(.*(?:\n [^\n]+)*)", text, re.M)
    if m:
        subject = " ".join(part.strip() for part in m.group(1).splitlines())
    patch = Patch(path.name, subject)
    current: FileDiff | None = None
    hunk: Hunk | None = None
    old_left = new_left = 0  # lines the current hunk still owes (its header's counts)
    for line in text.splitlines():
        if hunk is not None and (old_left > 0 or new_left > 0):
            mark = line[:1]
            if line.startswith("\\"):  # "\ No newline at end of file"
                continue
            if mark in (" ", ""):
                hunk.lines.append(line or " ")  # an empty context line
                old_left, new_left = old_left - 1, new_left - 1
            elif mark == "-":
                hunk.lines.append(line)
                old_left -= 1
            elif mark == "+":
                hunk.lines.append(line)
                new_left -= 1
            else:
                where = current.path if current else "?"
                raise ValueError(f"{path.name}: hunk at {hunk.new_start} of {where} ends "
                                 f"early: {line[:60]!r}")
            continue
        hunk = None
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("+++ "):
            target = line[4:].strip()
            current = FileDiff(target[2:] if target.startswith("b/") else target)
            patch.files.append(current)
        elif (hm := HUNK.match(line)) and current is not None:
            hunk = Hunk(int(hm.group(1)), int(hm.group(3)), hm.group(5))
            old_left = int(hm.group(2)) if hm.group(2) is not None else 1
            new_left = int(hm.group(4)) if hm.group(4) is not None else 1
            current.hunks.append(hunk)
    return patch


def is_call_site(path: str) -> bool:
    """Product code: Python outside the test trees (tests and release notes are not sites)."""
    return path.endswith(".py") and "/tests/" not in path and not path.startswith("tests/")


def _is_import(text: str) -> bool:
    return text.startswith("import ") or (text.startswith("from ") and " import " in text)


def _scope_from_header(header: str) -> str:
    m = DEF.match(header)
    return m.group(3) if m and not m.group(1) else MODULE


def sites(patch: Patch) -> set[tuple[str, str]]:
    """(file, scope) of every changed line, from the patch alone: ``Top`` or ``Top.method``
    when the method's ``def`` is shown in the hunk, ``(module)`` for module-level statements.
    Import lines are not sites."""
    out: set[tuple[str, str]] = set()
    for fd in patch.files:
        if not is_call_site(fd.path):
            continue
        for h in fd.hunks:
            top, method, method_indent = _scope_from_header(h.header), None, None
            for ln in h.lines:
                mark, text = ln[:1], ln[1:]
                m = DEF.match(text)
                if m and not m.group(1):
                    top, method, method_indent = m.group(3), None, None
                elif m and top != MODULE and (method_indent is None
                                              or len(m.group(1)) <= method_indent):
                    method, method_indent = m.group(3), len(m.group(1))
                elif text[:1] not in ("", " ", "\t", "#", ")", "]", "}", "@", '"', "'"):
                    top, method, method_indent = MODULE, None, None
                if mark in "+-" and text.strip() and not _is_import(text):
                    out.add((fd.path, f"{top}.{method}" if method else top))
    return out


def _spans(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every def and class, outermost first."""
    spans: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                spans.append((first, child.end_lineno or child.lineno, name))
                walk(child, name + ".")

    walk(ast.parse(source), "")
    return spans


def scope_at(spans: list[tuple[int, int, str]], lineno: int) -> str:
    inner = [s for s in spans if s[0] <= lineno <= s[1]]
    return max(inner, key=lambda s: s[0])[2] if inner else MODULE


def exact_sites(patches: list[Path], tree: Path, work: Path) -> dict[str, set[tuple[str, str]]]:
    """{patch name: {(file, innermost function)}}: the series applied one patch at a time to a
    copy of the files it touches from ``tree`` (the unpatched sources), each changed line
    located in the file as that patch leaves it."""
    parsed = [parse(p) for p in patches]
    touched = sorted({fd.path for p in parsed for fd in p.files})
    if work.exists():
        shutil.rmtree(work)
    for rel in touched:
        src, dst = tree / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            shutil.copy2(src, dst)
    out: dict[str, set[tuple[str, str]]] = {}
    for path, patch in zip(patches, parsed, strict=True):
        subprocess.run(["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--quiet",
                        "--no-backup-if-mismatch", "-i", str(path.resolve())],
                       cwd=work, check=True, capture_output=True)
        found: set[tuple[str, str]] = set()
        for fd in patch.files:
            if not is_call_site(fd.path):
                continue
            lines = (work / fd.path).read_text().splitlines()
            spans = _spans("\n".join(lines) + "\n")
            for h in fd.hunks:
                for n, text in h.changes():
                    if text.strip() and not _is_import(text):
                        found.add((fd.path, scope_at(spans, n)))
        out[patch.name] = found
    return out


@dataclass(frozen=True)
class Row:
    patch: str      # the number: "cinder/0003" or "nova/0001"
    file: str       # inside the project's package: "volume/api.py" for cinder/volume/api.py
    function: str
    change: str     # as written (RST)

    @property
    def path(self) -> str:
        """The file as the patch names it (``cinder/volume/api.py``)."""
        return f"{self.patch.split('/')[0]}/{self.file}"


TABLE_START = ".. work-items-table"


def rows(spec_text: str) -> list[Row]:
    """The rows of the spec's Work Items list-table (after a ``.. work-items-table`` comment):
    ``* - patch`` / ``- file`` / ``- function`` / ``- change``, literals unquoted."""
    start = spec_text.find(TABLE_START)
    if start < 0:
        raise ValueError("the spec has no '.. work-items-table' marker")
    body = spec_text[start:].split("\n\n\n", 1)[0]
    cells: list[list[str]] = []
    for line in body.splitlines():
        # By indentation, as render() writes it: "   * - " a row, "     - " a cell, deeper a
        # continuation (which may itself begin with "- " or ":").
        if line.startswith("   * - "):
            cells.append([line[7:].strip()])
        elif line.startswith("     - ") and cells:
            cells[-1].append(line[7:].strip())
        elif line.startswith("       ") and line.strip() and cells:
            cells[-1][-1] += " " + line.strip()
    out = []
    for c in cells[1:]:  # the first row is the header
        if len(c) != 4:
            raise ValueError(f"work item row with {len(c)} cells: {c}")
        out.append(Row(_unquote(c[0]), _unquote(c[1]), _unquote(c[2]), c[3]))  # change as written
    return out


def _unquote(cell: str) -> str:
    return cell.replace("``", "").strip()


def series(openstack_dir: Path) -> dict[str, list[Path]]:
    """{"cinder": [patch files in order], "nova": [...]}."""
    return {p: sorted((openstack_dir / p).glob("*.patch")) for p in ("cinder", "nova")}


def patch_label(project: str, path: Path) -> str:
    return f"{project}/{path.name[:4]}"


def expand(rows_: Iterable[Row]) -> set[tuple[str, str, str]]:
    """(patch, path, function) per row; a cell may list several functions separated by ', '."""
    out = set()
    for r in rows_:
        for fn in r.function.split(", "):
            out.add((r.patch, r.path, fn.strip()))
    return out


def from_series(openstack_dir: Path, per_patch: dict[str, set[tuple[str, str]]] | None = None
                ) -> set[tuple[str, str, str]]:
    """(patch, path, function) of the whole series: from ``per_patch`` (:func:`exact_sites`,
    keyed by patch file name) when given, else from the patches alone (:func:`sites`)."""
    out = set()
    for project, paths_ in series(openstack_dir).items():
        for path in paths_:
            found = per_patch[path.name] if per_patch is not None else sites(parse(path))
            out |= {(patch_label(project, path), f, fn) for f, fn in found}
    return out


def top(items: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """The same sites with each function cut to its top-level name (``API.create`` -> ``API``):
    what the patch text alone can tell."""
    return {(p, f, fn.split(".")[0]) for p, f, fn in items}


def render(found: set[tuple[str, str, str]], changes: dict[tuple[str, str], str]) -> str:
    """The spec's Work Items table (RST list-table, 79 columns) for the call sites ``found``
    ((patch, path, function), e.g. from :func:`from_series` with :func:`exact_sites`), one
    row per (patch, file) with its functions; ``changes`` holds the hand-written ``change``
    cell per (patch, path). The inverse of :func:`rows`."""
    import textwrap

    def cell(first: bool, text: str) -> list[str]:
        return textwrap.wrap(text, 79, initial_indent="   * - " if first else "     - ",
                             subsequent_indent="       ", break_long_words=False,
                             break_on_hyphens=False)

    by: dict[tuple[str, str], list[str]] = {}
    for patch, path, fn in sorted(found):
        by.setdefault((patch, path), []).append(fn)
    out = [TABLE_START, "", ".. list-table::", "   :header-rows: 1", "   :widths: 10 30 30 30",
           "", "   * - patch", "     - file (in the project)", "     - function",
           "     - change"]
    for (patch, path), fns in by.items():
        project = patch.split("/")[0]
        out += cell(True, f"``{patch}``")
        out += cell(False, f"``{path.removeprefix(project + '/')}``")
        out += cell(False, ", ".join(f"``{fn}``" for fn in fns))
        out += cell(False, changes[(patch, path)])
    return "\n".join(out) + "\n"


def table_text(spec_text: str) -> str:
    """The spec's Work Items table as written (from its marker to the first blank pair)."""
    start = spec_text.find(TABLE_START)
    if start < 0:
        raise ValueError("the spec has no '.. work-items-table' marker")
    return spec_text[start:].split("\n\n\n", 1)[0] + "\n"
