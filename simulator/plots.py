"""matplotlib plots of a simulation: NDCG@10 vs request rate, latency CDF, bytes per event."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from simulator.config import HEADLINE_POLICY, MATCHED_RANDOM


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_loc: str = "best") -> Path:
    """Labels, grid and legend, then save the figure to `path` and free it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ndcg_vs_rate(agg: list[dict], device_only: dict | None, path: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {(HEADLINE_POLICY, "fusion"): ("tab:blue", "-", "consistency, fusion"),
              (MATCHED_RANDOM, "fusion"): ("tab:blue", "--", "random, fusion"),
              (HEADLINE_POLICY, "srm"): ("tab:orange", "-", "consistency, SRM only"),
              (MATCHED_RANDOM, "srm"): ("tab:orange", "--", "random, SRM only"),
              (HEADLINE_POLICY, "llm"): ("tab:green", "-", "consistency, LLM only"),
              (MATCHED_RANDOM, "llm"): ("tab:green", "--", "random, LLM only")}
    drawn = False
    for (policy, fusion), (color, ls, label) in styles.items():
        rows = sorted((r for r in agg if r["policy"] == policy and r["fusion"] == fusion and not r["retrain"]),
                      key=lambda r: r["request_rate"])
        if rows:
            ax.plot([r["request_rate"] for r in rows], [r["ndcg@10"] for r in rows], ls, color=color,
                    marker="o", label=label)
            drawn = True
    lines = [(r, f"{r['policy']} ({r['fusion']})") for r in agg if r["policy"] in ("always", "never")
             and r["fusion"] in ("llm", "fusion") and not r["retrain"]]
    colors = iter(["tab:gray", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    for row, label in lines:
        ax.axhline(row["ndcg@10"], color=next(colors, "black"), lw=1, ls=":", label=label)
    if device_only:
        ax.axhline(device_only["ndcg@10"], color="black", lw=1.2, ls="-.", label="device-only SRM (no cloud)")
    if not drawn and not lines:
        plt.close(fig)
        return None
    return _finish(plt, fig, ax, path, "realised request rate", "NDCG@10 on the slate shown", "Accuracy against cloud requests", legend_loc="lower right")


def latency_cdf(rows_dir: Path, run_ids: list[str], path: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for run_id in run_ids:
        file = rows_dir / f"{run_id}.csv"
        if not file.is_file():
            continue
        with file.open() as fh:
            values = [float(r["latency_ms"]) for r in csv.DictReader(fh)
                      if r["requested"] == "True" and r["delivered"] == "True"]
        if values:
            values = np.sort(values)
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=run_id)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    return _finish(plt, fig, ax, path, "modelled request latency (ms)", "fraction of requests", "Latency CDF of cloud requests")


def bytes_per_event(agg: list[dict], path: Path) -> Path | None:
    plt = _plt()
    rows = sorted((r for r in agg if r["fusion"] == "fusion" and not r["retrain"]),
                  key=lambda r: (r["request_rate"], r["policy"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    markers = {HEADLINE_POLICY: "o", "threshold": "D", MATCHED_RANDOM: "s", "random": "^", "every": "v", "always": "*",
               "never": "x"}
    present = {r["policy"] for r in rows}
    for policy in [p for p in markers if p in present] + sorted(present - set(markers)):  # others: a plain marker
        sel = [r for r in rows if r["policy"] == policy]
        ax.scatter([r["request_rate"] for r in sel],
                   [r["bytes_up_per_event"] + r["bytes_down_per_event"] for r in sel], marker=markers.get(policy, "P"),
                   label=policy)
    return _finish(plt, fig, ax, path, "realised request rate", "bytes on the wire per event (up + down)", "Traffic per user event")


def by_popularity(rows: list[tuple[str, dict]], path: Path) -> Path | None:
    """Grouped bars: NDCG@10 per popularity bucket of the target, one bar per system."""
    if not rows:
        return None
    plt = _plt()
    buckets = list(rows[0][1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(rows)
    for n, (name, figures) in enumerate(rows):
        ax.bar(np.arange(len(buckets)) + (n - (len(rows) - 1) / 2) * width,
               [figures[b]["ndcg@10"] for b in buckets], width, label=name)
    ax.set_xticks(np.arange(len(buckets)))
    ax.set_xticklabels([f"{b}\n{rows[0][1][b]['events']:.0f} events" for b in buckets], fontsize=7)
    return _finish(plt, fig, ax, path, "training interactions of the target item", "NDCG@10",
                   "Who finds what: cloud, device and fusion by item popularity")
