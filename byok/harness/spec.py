"""Regenerate the spec's evidence blocks from a results run (``byok report RUN --spec FILE``).

A block is delimited by two RST comment lines, so docutils renders what lies between them and
ignores the markers::

    .. evidence: E04            (or: .. evidence: E12 open_s:* parallel_peak_mib:*:32)
       more_patterns:*          (optional: patterns go on over indented lines)

    (generated content, not indented: verdict, checks, key measurements, run id)

    .. end-evidence

Everything between the markers is replaced; everything else is left byte for byte. The output
depends only on the results, so regenerating from the same run is a no-op (idempotent).
"""

from __future__ import annotations

import fnmatch
import re
import textwrap
from pathlib import Path

from byok.harness.report import fmt
from byok.harness.results import ExperimentResult

# ``.. evidence: E12`` or ``.. evidence: E12 open_s:* parallel_peak_mib:*`` — the optional
# shell-style patterns choose which measurements the block shows (all that match, no cap).
START = re.compile(r"^\.\. evidence: (E\d+)((?:[ \t]+\S+)*)\s*$")
END = re.compile(r"^\.\. end-evidence\s*$")
MAX_ROWS = 10
WIDTH = 79  # cinder-specs and nova-specs wrap at 79 columns (doc8 D001 in the tests)


def _wrap(text: str, indent: str = "") -> list[str]:
    """A paragraph wrapped at WIDTH without breaking words (a literal may span lines)."""
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def _lit(text: str) -> str:
    text = str(text).replace("`", "'")
    return f"``{text}``" if text else ""


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    header = ("measurement", "value", "unit")
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
           rule]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    out.append(rule)
    return out


def block(exp_id: str, result: ExperimentResult | None, run_id: str,
          patterns: list[str] | None = None) -> list[str]:
    """The RST lines of one evidence block's content (measurements matching ``patterns``, or
    the first MAX_ROWS)."""
    if result is None:
        body = _wrap(f"*No result for {exp_id} in run* {_lit(run_id)}.")
    else:
        ok = sum(c.passed for c in result.checks)
        body = _wrap(f"**{exp_id}** — {result.title.replace('*', '')} · verdict "
                     f"**{result.verdict}** · {ok}/{len(result.checks)} checks passed · run "
                     f"{_lit(run_id)}")
        failed = [c for c in result.checks if not c.passed]
        if failed:
            body += [""]
            for c in failed[:5]:
                body += _wrap(f"- failed: {c.claim.replace('*', '')}", "  ")
        shown = [m for m in result.measurements if isinstance(m.value, (int, float, str))]
        if patterns:
            shown = [m for m in shown if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
        else:
            shown = shown[:MAX_ROWS]
        rows = [(_lit(m.name), _lit(fmt(m.value)), m.unit.replace("*", "")) for m in shown]
        if rows:
            table = _table(rows)
            if max(len(ln) for ln in table) <= WIDTH:
                body += ["", *table]
            else:  # a long text value: a list wraps where a table cannot (doc8's 79 columns)
                body += [""]
                for name, value, unit in rows:
                    body += _wrap(f"- {name}: {value} {unit}".rstrip(), "  ")
        if len(result.measurements) > len(rows):
            body += ["", *_wrap(f"({len(result.measurements) - len(rows)} more measurements "
                                f"in the run's report.)")]
    # Unindented on purpose: text indented under an RST comment belongs to the comment and
    # would not render.
    return body


def pick(exp_id: str, by_id: dict[str, ExperimentResult]
         ) -> tuple[ExperimentResult | None, str]:
    """The result an evidence block for ``exp_id`` shows: the Cinder variant (``E03-cinder``,
    the hypothesis through real Cinder's REST API) wherever it ran, else the prototype; and a
    sentence saying which, for the block."""
    proto, variant = by_id.get(exp_id), by_id.get(f"{exp_id}-cinder")
    if variant is not None and not variant.verdict.startswith("skipped"):
        other = f" (prototype {exp_id}: {proto.verdict})" if proto else ""
        return variant, (f"Evidence from {variant.id}, the hypothesis through the REST API of "
                         f"the patched Cinder's services{other}.")
    if variant is not None:
        return proto, (f"Evidence from the prototype {exp_id}; the Cinder variant "
                       f"{variant.id} was {variant.verdict}.")
    return proto, ""


def inject(spec: Path, results: list[ExperimentResult], run_id: str) -> tuple[str, list[str]]:
    """The spec text with every evidence block regenerated, and the experiment ids found."""
    by_id: dict[str, ExperimentResult] = {}
    for r in results:
        if r.repeat == 0 or r.id not in by_id:
            by_id[r.id] = r
    lines = spec.read_text().splitlines()
    out: list[str] = []
    found: list[str] = []
    i = 0
    while i < len(lines):
        m = START.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        exp_id = m.group(1)
        patterns = m.group(2).split()
        head = [lines[i]]
        j = i + 1
        # Patterns may go on over indented lines (79 columns): they belong to the comment.
        while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip():
            patterns += lines[j].split()
            head.append(lines[j])
            j += 1
        while j < len(lines) and not END.match(lines[j]):
            if START.match(lines[j]):
                raise ValueError(f"{spec}: evidence block {exp_id} (line {i + 1}) is not closed")
            j += 1
        if j == len(lines):
            raise ValueError(f"{spec}: evidence block {exp_id} (line {i + 1}) is not closed")
        found.append(exp_id)
        chosen, which = pick(exp_id, by_id)
        body = block(chosen.id if chosen else exp_id, chosen, run_id, patterns or None)
        if which:
            body += ["", *_wrap(which)]
        out += [*head, "", *body, "", lines[j]]
        i = j + 1
    return "\n".join(out) + "\n", found


def update(spec: Path, results: list[ExperimentResult], run_id: str) -> bool:
    """Rewrite ``spec`` in place; True if anything changed."""
    text, _ = inject(spec, results, run_id)
    if text == spec.read_text():
        return False
    spec.write_text(text)
    return True
