"""An ablation's report: one table (per metric and variant: mean ± std over seeds, the difference to the baseline
with its paired bootstrap interval), one plot per metric, written as Markdown and HTML and printed on the console.
Everything here is a function of the scores alone (the bootstrap is seeded), so the same scores give the same
files and the same table."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from gem_stages.files import atomic_write_text

from .ablation_stats import LEVEL, RESAMPLES, paired_bootstrap, spread

HEADERS = ("metric", "variant", "mean ± std", "seeds", "Δ vs baseline", f"{LEVEL:.0%} interval")


def table(scores: dict[str, dict[str, dict[int, float]]], variants: list[str], baseline: str) -> list[dict]:
    """Rows in report order: metrics as scored (each benchmark's overall before its categories), variants in the
    ablation file's order, the baseline first."""
    order = [baseline, *[v for v in variants if v != baseline]]
    rows = []
    for metric, by_variant in scores.items():
        for v in order:
            if v not in by_variant:
                continue
            s = spread(list(by_variant[v].values()))
            row = {"metric": metric, "variant": v, "mean": s.mean, "std": s.std, "seeds": s.n, "diff": None,
                   "low": None, "high": None}
            if v != baseline and baseline in by_variant:
                d = paired_bootstrap(by_variant[baseline], by_variant[v])
                row.update(diff=d.mean, low=d.low, high=d.high)
            rows.append(row)
    return rows


def cells(row: dict) -> list[str]:
    if row["diff"] is None:
        diff, interval = "baseline", ""
    else:
        diff, interval = f"{row['diff']:+.4f}", f"[{row['low']:+.4f}, {row['high']:+.4f}]"
    return [row["metric"], row["variant"], f"{row['mean']:.4f} ± {row['std']:.4f}", str(row["seeds"]), diff,
            interval]


def method(baseline: str, seeds: int) -> str:
    return (f"Mean ± sample standard deviation over {seeds} seed(s). Δ: mean over seeds of (variant − {baseline}), "
            f"paired by seed (same init, data order and held-out items); interval: {LEVEL:.0%} percentile "
            f"bootstrap of that mean, {RESAMPLES} resamples of the seeds with replacement (items are not "
            "resampled). Few seeds give a coarse interval: 3 seeds allow only 10 distinct resamples.")


def method_short(seeds: int) -> str:
    return f"{seeds} seed(s), Δ with a paired bootstrap {LEVEL:.0%} interval over seeds"


def write(folder: Path, title: str, description: str, rows: list[dict], scores: dict, runs: list[dict],
          baseline: str, seeds: int) -> list[Path]:
    """report.md, report.html, plots/<metric>.svg and scores.json in `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in (folder / "plots").glob("*.svg"):  # a metric no longer scored leaves no stale plot behind
        old.unlink()
    plots = {metric: plot(folder / "plots" / f"{_slug(metric)}.svg", metric, by_variant,
                          [r["variant"] for r in rows if r["metric"] == metric], baseline)
             for metric, by_variant in scores.items()}
    md = [f"# Ablation {title}", "", description, "", method(baseline, seeds), "",
          "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    md += ["", "## Plots", ""] + [f"![{m}](plots/{p.name})" for m, p in plots.items()]
    md += ["", "## Runs", "", "| variant | seed | recipe (runs/…) |", "|---|---|---|"]
    md += [f"| {r['variant']} | {r['seed']} | {r['recipe']} |" for r in runs]
    atomic_write_text(folder / "report.md", "\n".join(md) + "\n")
    esc = html.escape
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells(r)) + "</tr>\n" for r in rows)
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>Ablation {esc(title)}</title>\n"
            "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:nth-child(-n+2){text-align:left}"
            "</style></head><body>\n"
            f"<h1>Ablation {esc(title)}</h1>\n<p>{esc(description)}</p>\n<p>{esc(method(baseline, seeds))}</p>\n"
            "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADERS) + "</tr>\n" + body + "</table>\n"
            + "".join(f"<h2>{esc(m)}</h2><img src='plots/{esc(p.name)}' alt='{esc(m)}'>\n" for m, p in plots.items())
            + "<h2>Runs</h2><table><tr><th>variant</th><th>seed</th><th>recipe</th></tr>\n"
            + "".join(f"<tr><td>{esc(r['variant'])}</td><td>{r['seed']}</td><td>{esc(r['recipe'])}</td></tr>\n"
                      for r in runs)
            + "</table></body></html>\n")
    atomic_write_text(folder / "report.html", page)
    atomic_write_text(folder / "scores.json", json.dumps({"rows": rows, "scores": scores, "runs": runs},
                                                         indent=1, sort_keys=True) + "\n")
    return [folder / "report.md", folder / "report.html", folder / "scores.json", *plots.values()]


def plot(path: Path, metric: str, by_variant: dict[str, dict[int, float]], order: list[str], baseline: str) -> Path:
    """Each seed's score as a dot, the mean ± std as a bar per variant, the baseline's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": "gemctl", "svg.fonttype": "none"}):  # same scores, same file
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(order), 3.2))
        for x, v in enumerate(order):
            values = [by_variant[v][s] for s in sorted(by_variant[v])]
            s = spread(values)
            ax.errorbar([x], [s.mean], yerr=[s.std], fmt="s", color="C0" if v == baseline else "C1", capsize=4)
            ax.plot([x + 0.15] * len(values), values, ".", color="0.4")
        if baseline in by_variant:
            ax.axhline(spread(list(by_variant[baseline].values())).mean, ls="--", lw=0.8, color="C0")
        ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        fig.tight_layout()
        tmp = path.with_suffix(".tmp.svg")
        fig.savefig(tmp, format="svg", metadata={"Date": None})
        plt.close(fig)
    tmp.replace(path)
    return path


def print_table(console, title: str, rows: list[dict]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    texts = [cells(r) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(HEADERS, *texts)]
    for h, w in zip(HEADERS, widths):
        t.add_column(h, no_wrap=True, min_width=w)
    for row in texts:
        t.add_row(*[Text(c) for c in row])
    # never cut a number: wider than the terminal rather than "0.23…" (the table is what a re-run compares)
    width = console.width
    console.width = max(width, sum(widths) + 3 * len(widths))  # print(width=...) cannot exceed the console's
    try:
        console.print(t, highlight=False)
    finally:
        console.width = width


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
