"""``byok report RUN_DIR``: report.md with a verdict table, a section per experiment, plots.

Generated from the results JSON only (never from code or expectations), so a report can be
rebuilt anywhere from a results directory. Plots (matplotlib, PNG) are drawn where a picture
says more, from measurements named by convention (``open_s:<policy>``, ``rekey_s:<MiB>`` ...).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from byok.harness.results import ExperimentResult, load_run

PlotFn = Callable[[ExperimentResult, Path], Path | None]


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value):
            return str(value)
        mag = abs(value)
        if mag >= 1000:
            return f"{value:,.0f}"
        if mag >= 1:
            return f"{value:.3g}" if mag < 100 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def _series(res: ExperimentResult, prefix: str) -> dict[str, float]:
    out = {}
    for m in res.measurements:
        if m.name.startswith(prefix) and isinstance(m.value, (int, float)):
            out[m.name[len(prefix):]] = float(m.value)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_resolve(res: ExperimentResult, out: Path) -> Path | None:
    c, b = res.measurement("resolve_castellan_s"), res.measurement("resolve_byok_s")
    if not c or not b or not c.samples or not b.samples:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.boxplot([[s * 1000 for s in c.samples], [s * 1000 for s in b.samples]],
               tick_labels=["castellan get\n(stock backend)", "byok resolve\n(session reused)"])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Resolve latency, same secret, same run")
    return _save(fig, out / f"{res.id}-resolve.png")


def plot_pbkdf(res: ExperimentResult, out: Path) -> Path | None:
    opens = _series(res, "open_s:")
    if not opens:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    names = list(opens)
    axes[0].bar(names, [opens[n] for n in names], color="#4a7")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Unlock (the KDF of an open), by PBKDF policy")
    axes[0].set_yscale("log")
    for policy in names:
        wall = _series(res, f"parallel_wall_s:{policy}:")
        mem = _series(res, f"parallel_peak_mib:{policy}:")
        if wall:
            ns = sorted(wall, key=int)
            axes[1].plot([int(n) for n in ns], [wall[n] for n in ns], marker="o", label=policy)
        if mem:
            ns = sorted(mem, key=int)
            axes[2].plot([int(n) for n in ns], [mem[n] for n in ns], marker="o", label=policy)
    for ax, title, unit in ((axes[1], "N parallel unlocks: wall time", "seconds"),
                            (axes[2], "N parallel unlocks: peak memory", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N")
        ax.set_ylabel(unit)
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, out / f"{res.id}-pbkdf.png")


def plot_rekey(res: ExperimentResult, out: Path) -> Path | None:
    rekey, reenc = _series(res, "rekey_s:"), _series(res, "reencrypt_s:")
    if not rekey or not reenc:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for series, label in ((rekey, "keyslot rekey"), (reenc, "full re-encryption")):
        xs = sorted(series, key=float)
        ax.plot([float(x) for x in xs], [series[x] for x in xs], marker="o", label=label)
    ax.set_xlabel("volume size (MiB)")
    ax.set_ylabel("seconds")
    ax.set_title("Rekey vs re-encryption")
    ax.legend()
    return _save(fig, out / f"{res.id}-rekey.png")


def plot_recovery(res: ExperimentResult, out: Path) -> Path | None:
    series = [(_series(res, "recover_to_file_mb_s:"), "byok recover --out FILE"),
              (_series(res, "recover_decrypt_mb_s:"), "byok recover --check (decrypt only)"),
              (_series(res, "openssl_mb_s:"), "openssl speed aes-256-xts (one core)")]
    series = [(s, label) for s, label in series if s]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    keys = sorted(series[0][0], key=int)
    width = 0.8 / len(series)
    for i, (s, label) in enumerate(series):
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(keys))],
               [s.get(k, 0) for k in keys], width, label=label)
    ax.set_xticks(list(range(len(keys))), [f"{k} B sectors" for k in keys])
    ax.set_ylabel("MB/s")
    ax.set_yscale("log")
    ax.set_title("Offline recovery throughput vs the AES-XTS limit")
    ax.legend(fontsize=7)
    return _save(fig, out / f"{res.id}-recovery.png")


def bench_rows(bench: dict) -> list[tuple[str, str, float, str, bool]]:
    """(benchmark, figure name, value, target text, met) for every headline figure."""
    rows = []
    for name, b in bench.items():
        if not isinstance(b, dict):
            continue
        for fig, target, met in (("ratio_p50", "target", "target_met"),
                                 ("ratio", "target", "target_met"),
                                 ("machine_key_n32_peak_mib", "target", "target_met"),
                                 ("seconds", "target", "target_met")):
            if fig in b and target in b:
                rows.append((name, fig, b[fig], str(b[target]), bool(b.get(met))))
                break
        for fig, target, met in (("kdf_speedup", "kdf_target", "kdf_target_met"),
                                 ("user_path_vs_stock_p50", "user_path_target",
                                  "user_path_target_met")):
            if fig in b and target in b:
                rows.append((name, fig, b[fig], str(b[target]), bool(b.get(met))))
    return rows


def _margin(value: float, target: str) -> float | None:
    """How far a figure is on the good side of its target (> 1: met), from the target text."""
    m = re.search(r"(<=|>=)\s*([\d.]+)", target) or re.search(r"(within)\s*([\d.]+)", target)
    if not m or not isinstance(value, (int, float)) or value <= 0:
        return None
    limit = float(m.group(2))
    return value / limit if m.group(1) == ">=" else limit / value


def plot_bench(bench: dict, out: Path) -> Path | None:
    rows = [(f"{n}: {f}", _margin(v, t), met) for n, f, v, t, met in bench_rows(bench)]
    rows = [r for r in rows if r[1]]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    from matplotlib.ticker import FuncFormatter, NullFormatter

    margins = [float(r[1] or 1.0) for r in rows]
    ax.barh([r[0] for r in rows], [m - 1 for m in margins], left=1,  # from the target line
            color=["#6c6" if r[2] else "#e44" for r in rows])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    lo, hi = min(0.5, min(margins) / 1.5), max(2.0, max(margins) * 1.5)
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if lo <= t <= hi])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("margin to target (> 1: met; log scale)")
    ax.set_title("Benchmarks: each figure against its target")
    ax.invert_yaxis()
    return _save(fig, out / "bench-margins.png")


def plot_crash_matrix(res: ExperimentResult, out: Path) -> Path | None:
    cells = {m.name[len("outcome:"):]: str(m.value) for m in res.measurements
             if m.name.startswith("outcome:")}
    if not cells:
        return None
    rows = sorted({k.split(":")[0] for k in cells})
    cols = list(dict.fromkeys(k.split(":")[1] for k in cells))
    colors = {"completed": "#6c6", "rolled-back": "#9cf", "LOST": "#e44"}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 1.5, 0.6 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = cells.get(f"{r}:{c}", "")
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=colors.get(v, "#ddd")))
            ax.text(j + 0.5, i + 0.5, v, ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(0, len(rows))
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols, fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.set_title("kill -9 after each rotation step → state after resume")
    return _save(fig, out / f"{res.id}-crash-matrix.png")


PLOTS: dict[str, list[PlotFn]] = {}
for fn in (plot_resolve, plot_pbkdf, plot_rekey, plot_recovery, plot_crash_matrix):
    PLOTS.setdefault("*", []).append(fn)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def variants_table(results: list[ExperimentResult]) -> list[str]:
    """Prototype and Cinder variant side by side (``E03`` / ``E03-cinder``), and which one the
    spec's evidence block uses (:func:`byok.harness.spec.pick`)."""
    from byok.harness import spec

    by_id = {r.id: r for r in results if r.repeat == 0}
    variants = [r for r in by_id.values() if r.id.endswith("-cinder")]
    if not variants:
        return []
    rows = ["", "## Prototype and Cinder variants", "",
            "The same hypothesis through byok's prototype (`byok/lifecycle`) and through the "
            "REST API of the patched Cinder's services (`byok cinder up`).", "",
            "| hurdle | prototype | verdict | Cinder variant | verdict | spec evidence uses |",
            "|---|---|---|---|---|---|"]
    for v in sorted(variants, key=lambda r: r.id):
        base = v.id.removesuffix("-cinder")
        proto = by_id.get(base)
        chosen, _why = spec.pick(base, by_id)
        rows.append(
            f"| {v.hurdle} | [{base}](#{base.lower()}) | "
            f"{_md_escape(proto.verdict) if proto else 'not run'} | "
            f"[{v.id}](#{v.id.lower()}) | {_md_escape(v.verdict)} | "
            f"{chosen.id if chosen else '-'} |")
    return rows


def render(run_dir: Path, *, bench: dict | None = None) -> Path:
    """Write ``run_dir/report.md`` (+ ``plots/``) and return its path."""
    results = load_run(run_dir)
    summary = {}
    if (run_dir / "run.json").exists():
        summary = json.loads((run_dir / "run.json").read_text())
    plots_dir = run_dir / "plots"
    lines = [f"# byok experiment report — run {summary.get('run_id', run_dir.name)}", ""]
    if summary:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.get("counts", {}).items()))
        lines += [
            f"Started {summary.get('started')}, {summary.get('seconds', 0):.1f} s wall"
            f"{' (interrupted)' if summary.get('interrupted') else ''}; {counts}.", "",
        ]
        host = summary.get("host", {})
        if host:
            lines += ["Host: " + ", ".join(f"{k} {v}" for k, v in host.items() if v), ""]
    lines += ["| id | experiment | hurdle | verdict | checks | seconds |",
              "|---|---|---|---|---|---|"]
    for r in results:
        ok = sum(c.passed for c in r.checks)
        rep = f" (repeat {r.repeat})" if r.repeat else ""
        lines.append(f"| [{r.id}](#{r.id.lower()}){rep} | {_md_escape(r.title)} | {r.hurdle} | "
                     f"**{_md_escape(r.verdict)}** | {ok}/{len(r.checks)} | {r.seconds:.1f} |")
    lines += variants_table(results)
    if bench:
        lines += ["", "## Benchmarks", "", "| benchmark | figure | target | met |",
                  "|---|---|---|---|"]
        for name, fig, value, target, met in bench_rows(bench):
            lines.append(f"| {name} | `{fig}` = {fmt(value)} | {_md_escape(target)} | "
                         f"{'yes' if met else '**no**'} |")
        try:
            p = plot_bench(bench, plots_dir)
        except Exception as e:  # a broken plot must not lose the report
            lines += ["", f"*(benchmark plot failed: {e})*"]
        else:
            if p:
                lines += ["", f"![benchmark margins](plots/{p.name})"]
    for r in results:
        lines += ["", f"## {r.id}", "", f"**{_md_escape(r.title)}** — hurdle {r.hurdle}", "",
                  f"*Hypothesis:* {r.hypothesis}", "", f"*Verdict:* **{r.verdict}** "
                  f"({r.seconds:.1f} s)", ""]
        if r.error:
            lines += ["```", r.error.strip()[-1500:], "```", ""]
        if r.checks:
            lines += ["| | check | detail |", "|---|---|---|"]
            for c in r.checks:
                lines.append(f"| {'✅' if c.passed else '❌'} | {_md_escape(c.claim)} | "
                             f"{_md_escape(c.detail)[:200]} |")
            lines.append("")
        if r.measurements:
            lines += ["| measurement | value | unit | samples |", "|---|---|---|---|"]
            for m in r.measurements:
                lines.append(f"| `{_md_escape(m.name)}` | {_md_escape(fmt(m.value))} | "
                             f"{m.unit} | {len(m.samples) or ''} |")
            lines.append("")
        for note in r.notes:
            lines += [f"> {_md_escape(note)}", ""]
        for fn in PLOTS["*"]:
            try:
                p = fn(r, plots_dir)
            except Exception as e:  # a broken plot must not lose the report
                lines += [f"*(plot {fn.__name__} failed: {e})*", ""]
                continue
            if p:
                lines += [f"![{r.id} {fn.__name__}](plots/{p.name})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
