"""``byok report RUN_DIR``: report.md with a verdict table, a section per experiment, plots.

Generated from the results JSON only (never from code or expectations), so a report can be
rebuilt anywhere from a results directory. Plots (matplotlib, PNG) are drawn where a picture
says more, from measurements named by convention (``open_s:<policy>``, ``rekey_s:<MiB>`` ...).
"""

from __future__ import annotations

import json
import math
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
    ours, ossl = _series(res, "recover_mb_s:"), _series(res, "openssl_mb_s:")
    if not ours:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    keys = sorted(ours, key=int)
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [ours[k] for k in keys], 0.4, label="byok recover")
    if ossl:
        ax.bar([x + 0.2 for x in xs], [ossl.get(k, 0) for k in keys], 0.4,
               label="openssl speed aes-256-xts")
    ax.set_xticks(list(xs), [f"{k} B sectors" for k in keys])
    ax.set_ylabel("MB/s")
    ax.set_yscale("log")
    ax.set_title("Offline decryption throughput")
    ax.legend(fontsize=8)
    return _save(fig, out / f"{res.id}-recovery.png")


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
    if bench:
        lines += ["", "## Benchmarks", "", "| benchmark | figure | target | met |",
                  "|---|---|---|---|"]
        for name, b in bench.items():
            if not isinstance(b, dict):
                continue
            for fig, target, met in (("ratio_p50", "target", "target_met"),
                                     ("ratio", "target", "target_met"),
                                     ("kdf_speedup", "kdf_target", "kdf_target_met"),
                                     ("machine_key_n32_peak_mib", "target", "target_met"),
                                     ("seconds", "target", "target_met")):
                if fig in b and target in b:
                    lines.append(f"| {name} | `{fig}` = {fmt(b[fig])} | {_md_escape(b[target])} "
                                 f"| {'yes' if b.get(met) else '**no**'} |")
                    break
            if "kdf_speedup" in b and "ratio_p50" in b:
                lines.append(f"| {name} | `kdf_speedup` = {fmt(b['kdf_speedup'])} | "
                             f"{_md_escape(b['kdf_target'])} | "
                             f"{'yes' if b.get('kdf_target_met') else '**no**'} |")
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
