"""report.md, PNG plots and the mission's bars, all from metrics.json (also for a partial run)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from device.runtime.consistency import MEASURES
from device.runtime.fusion import LLM_NORMS, SRM_NORMS
from simulator import plots
from simulator.config import HEADLINE_POLICY, MATCHED_RANDOM
from simulator.figures import PER_USER, POPULARITY, paired_difference

METRIC = "ndcg@10"
BAR_BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
PROTOCOL = """Protocol B (streaming replay, docs/design.md section 3). Per user, the last S interactions form the
live stream; everything before is the past. The SRM is trained on the past; the cloud LLM on the past
minus its last `cloud_lag` items. At session start the device holds the N-item list the cloud generated
from the history it last saw (past minus `cloud_lag` items) while the device knows the whole past.
For each stream step t = 1..S, in global timestamp order over all users: (1) the device shows a top-K
slate from its cached list minus consumed items; (2) HR/NDCG/MRR@K are taken on that slate against
the true item; (3) the item is revealed and appended to the device history; (4) the policy decides
whether to request a fresh list (generated from the history up to t) for the next step.
Request rate = requests after session start / steps. A target outside the slate is a miss."""


#: Order of the results table's rows: the baselines, the budget policy and its random twin; any other policy after.
_POLICY_ORDER = ("never", "always", "every", "random", "threshold", HEADLINE_POLICY, MATCHED_RANDOM)


def _key(run: dict) -> tuple:
    return run["policy"], run["fusion"], run.get("budget"), bool(run.get("retrain"))


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean (and spread for NDCG@10) over seeds of each policy x fusion x budget."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_key(run)].append(run)
    out = []
    for (policy, fusion, budget, retrain), members in groups.items():
        row = {"policy": policy, "fusion": fusion, "budget": budget, "retrain": retrain, "seeds": len(members)}
        for name in ("hr@10", "ndcg@10", "mrr@10", "request_rate", "stale_slates", "failed_requests",
                     "bytes_up_per_event", "bytes_down_per_event", "latency_p50_ms", "latency_p99_ms"):
            values = [m[name] for m in members if m.get(name) is not None]
            row[name] = float(np.mean(values)) if values else None
        values = [m[METRIC] for m in members]
        row["ndcg@10_std"] = float(np.std(values)) if len(values) > 1 else 0.0
        buckets = [m[POPULARITY] for m in members if m.get(POPULARITY)]
        if buckets and len(buckets) == len(members):  # mean over seeds, bucket by bucket
            row[POPULARITY] = {b: {k: float(np.mean([m[b][k] for m in buckets])) for k in buckets[0][b]}
                               for b in buckets[0]}
        per_user = [m[PER_USER] for m in members if m.get(PER_USER)]
        if per_user and len(per_user) == len(members) and len({len(p) for p in per_user}) == 1:
            row[PER_USER] = np.mean(per_user, axis=0).tolist()  # mean over seeds, user by user
        out.append(row)
    return out


def _find(agg: list[dict], policy: str, fusion: str, budget=None) -> dict | None:
    for row in agg:
        if row["policy"] == policy and row["fusion"] == fusion and not row["retrain"] and (
                budget is None or (row["budget"] is not None and math.isclose(row["budget"], budget))):
            return row
    return None


def evaluate_bars(metrics: dict) -> dict:
    """The three bars of the mission, each with its figures and met / not met (None = not measured)."""
    agg = metrics.get("aggregate") or aggregate(metrics.get("runs", []))
    bars = {}
    per_budget, paired, met = {}, {}, True
    for budget in BAR_BUDGETS:
        c, r = _find(agg, HEADLINE_POLICY, "fusion", budget), _find(agg, MATCHED_RANDOM, "fusion", budget)
        if c is None or r is None:
            met = None if met is not False else met
            continue
        per_budget[f"{budget:.0%}"] = {"consistency": c[METRIC], "random": r[METRIC],
                                        "rate_consistency": c["request_rate"], "rate_random": r["request_rate"]}
        paired[f"random@{budget:.0%}"] = _paired(c, r)
        met = met and c[METRIC] > r[METRIC] if met is not None else met
    bars["consistency_beats_chance"] = {"met": met if len(per_budget) == len(BAR_BUDGETS) else None,
                                        "figures": per_budget, "paired": paired}
    fus, llm, srm = (_find(agg, HEADLINE_POLICY, f, 0.2) for f in ("fusion", "llm", "srm"))
    dev = metrics.get("device_only")
    if fus and llm and srm and dev:
        figs = {"fusion": fus[METRIC], "llm_only": llm[METRIC], "srm_only": srm[METRIC], "device_only": dev[METRIC]}
        ok = fus[METRIC] > max(llm[METRIC], srm[METRIC], dev[METRIC])
        bars["collaboration_beats_either_side"] = {"met": ok, "figures": figs, "paired": {
            "llm_only": _paired(fus, llm), "srm_only": _paired(fus, srm), "device_only": _paired(fus, dev)}}
    else:
        bars["collaboration_beats_either_side"] = {"met": None, "figures": {}}
    always = _find(agg, "always", "llm")
    if fus and always:
        bars["collaboration_saves_the_cloud"] = {
            "met": fus[METRIC] >= always[METRIC],
            "figures": {"fusion_consistency_20%": fus[METRIC], "llm_always": always[METRIC],
                        "fusion_rate": fus["request_rate"], "llm_always_rate": always["request_rate"]},
            "paired": {"llm_always": _paired(fus, always)}}
    else:
        bars["collaboration_saves_the_cloud"] = {"met": None, "figures": {}}
    return bars


def _paired(run: dict, other: dict) -> dict | None:
    """run - other, user by user (NDCG@10), with a 95% bootstrap interval; None without per-user figures."""
    if not (run.get(PER_USER) and other.get(PER_USER)):
        return None
    return paired_difference(run[PER_USER], other[PER_USER])


def _fmt(value, digits=4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(agg: list[dict], device_only: dict | None) -> list[str]:
    lines = ["| policy | fusion | budget | seeds | request rate | HR@10 | NDCG@10 (± sd) | MRR@10 | stale slates "
             "| bytes up/ev | bytes down/ev | latency p50 ms |", "|" + "---|" * 12]
    order = {name: n for n, name in enumerate(_POLICY_ORDER)}
    for row in sorted(agg, key=lambda r: (r["retrain"], r["fusion"], order.get(r["policy"], len(order)),
                                          r["budget"] or 0)):
        budget = "-" if row["budget"] is None else f"{row['budget']:.0%}"
        name = row["policy"] + (" + retrain" if row["retrain"] else "")
        lines.append(f"| {name} | {row['fusion']} | {budget} | {row['seeds']} | {_fmt(row['request_rate'], 3)} | "
                     f"{_fmt(row['hr@10'])} | {_fmt(row['ndcg@10'])} ± {_fmt(row['ndcg@10_std'])} | "
                     f"{_fmt(row['mrr@10'])} | {_fmt(row['stale_slates'], 1)} | {_fmt(row['bytes_up_per_event'], 1)} | "
                     f"{_fmt(row['bytes_down_per_event'], 1)} | {_fmt(row['latency_p50_ms'], 1)} |")
    if device_only:
        lines.append(f"| device-only (SRM, full catalogue) | - | - | 1 | 0.000 | {_fmt(device_only['hr@10'])} | "
                     f"{_fmt(device_only['ndcg@10'])} | {_fmt(device_only['mrr@10'])} | 0 | 0 | 0 | - |")
    return lines


def _bar_lines(bars: dict) -> list[str]:
    names = {"consistency_beats_chance": "Consistency beats chance (fusion, NDCG@10 vs random at the same realised rate, "
                                         "every budget in 5-50%)",
             "collaboration_beats_either_side": "Collaboration beats either side (20% budget: fusion > LLM-only, "
                                                "SRM-only and device-only)",
             "collaboration_saves_the_cloud": "Collaboration saves the cloud (fusion + consistency at 20% >= "
                                              "LLM-only with requests on every event)"}
    lines = []
    for key, text in names.items():
        bar = bars.get(key, {"met": None, "figures": {}})
        verdict = {True: "**MET**", False: "**NOT MET**", None: "not measured in this run"}[bar["met"]]
        weak = [k for k, v in bar.get("paired", {}).items() if v and v["ci95"][0] <= 0]
        if bar["met"] and weak:  # met on the means; say where the paired interval does not exclude 0
            verdict += f" on the means, not significant vs {', '.join(weak)} (paired interval includes 0)"
        figs = ", ".join(f"{k}: " + (", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items()) if isinstance(v, dict)
                                     else _fmt(v)) for k, v in bar["figures"].items())
        lines.append(f"- {text}: {verdict}. {figs}")
        paired = {k: v for k, v in bar.get("paired", {}).items() if v}
        if paired:
            lines.append("  Paired over users (difference of NDCG@10, 95% bootstrap interval): " + ", ".join(
                f"vs {k} {v['diff']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for k, v in paired.items()))
    return lines


def _headline(metrics: dict) -> list[dict]:
    """The few rows a reader needs: baselines and the 20% budget, fusion first."""
    agg = metrics.get("aggregate", [])
    rows = []
    for policy, fusion, budget, name in (
            (HEADLINE_POLICY, "fusion", 0.2, "fusion + consistency requests (20% budget)"),
            (MATCHED_RANDOM, "fusion", 0.2, "fusion + random requests (same rate)"),
            (HEADLINE_POLICY, "srm", 0.2, "SRM re-rank only + consistency (20%)"),
            (HEADLINE_POLICY, "llm", 0.2, "LLM order only + consistency (20%)"),
            ("always", "llm", None, "LLM order only, request every event"),
            ("always", "fusion", None, "fusion, request every event (upper bound)"),
            ("never", "fusion", None, "fusion, never request (lower bound)"),
            ("never", "srm", None, "device-only, re-ranking its cached list (never requests)")):
        row = _find(agg, policy, fusion, budget)
        if row:
            rows.append({"system": name, "request_rate": row["request_rate"], "ndcg@10": row["ndcg@10"],
                         "hr@10": row["hr@10"], "mrr@10": row["mrr@10"]})
    dev = metrics.get("device_only")
    if dev:
        rows.append({"system": "device-only SRM, full catalogue (no cloud; reference, small catalogues)",
                     "request_rate": 0.0,
                     "ndcg@10": dev["ndcg@10"], "hr@10": dev["hr@10"], "mrr@10": dev["mrr@10"]})
    return rows


POPULARITY_SYSTEMS = (("always", "llm", None, "cloud LLM (request every event)"),
                      (HEADLINE_POLICY, "srm", 0.2, "SRM re-rank (20%)"),
                      (HEADLINE_POLICY, "fusion", 0.2, "fusion (20%)"))


def popularity_rows(metrics: dict) -> list[tuple[str, dict]]:
    """(system, {bucket: figures}) for the cloud, the device's re-rank, fusion and the device alone."""
    agg = metrics.get("aggregate", [])
    rows = [(name, row[POPULARITY]) for policy, fusion, budget, name in POPULARITY_SYSTEMS
            if (row := _find(agg, policy, fusion, budget)) and row.get(POPULARITY)]
    dev = metrics.get("device_only") or {}
    if dev.get(POPULARITY):
        rows.append(("device-only SRM (no cloud)", dev[POPULARITY]))
    return rows


def popularity_lines(metrics: dict) -> list[str]:
    """NDCG@10 by how many training interactions the target item had (events per bucket in the header)."""
    rows = popularity_rows(metrics)
    if not rows:
        return []
    buckets = list(rows[0][1])
    head = " | ".join(f"{b} ({rows[0][1][b]['events']:.0f} events)" for b in buckets)
    lines = [f"| system | {head} |", "|---|" + "---|" * len(buckets)]
    lines += [f"| {name} | " + " | ".join(f"{fig[b]['ndcg@10']:.4f}" for b in buckets) + " |" for name, fig in rows]
    return lines


def headline_lines(metrics: dict) -> list[str]:
    lines = ["| system | request rate | NDCG@10 | HR@10 | MRR@10 |", "|---|---|---|---|---|"]
    for r in _headline(metrics):
        lines.append(f"| {r['system']} | {r['request_rate']:.3f} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | "
                     f"{r['mrr@10']:.4f} |")
    return lines


def write_report(metrics: dict, out: Path) -> Path:
    agg = metrics.get("aggregate", [])
    cfg = metrics.get("config", {})
    images = []
    for name, made in (("ndcg_vs_rate.png", lambda p: plots.ndcg_vs_rate(agg, metrics.get("device_only"), p)),
                       ("latency_cdf.png", lambda p: plots.latency_cdf(out / "rows", _cdf_runs(metrics), p)),
                       ("bytes_per_event.png", lambda p: plots.bytes_per_event(agg, p)),
                       ("ndcg_by_popularity.png", lambda p: plots.by_popularity(popularity_rows(metrics), p))):
        if made(out / name):
            images.append(name)
    status = metrics.get("status")
    lines = ["# Device-cloud collaborative recommendation: simulation report", ""]
    if status != "complete":
        lines += [f"**Status: {status}** — stopped during `{metrics.get('stopped_at', '?')}`; the tables below "
                  f"hold the {len(metrics.get('runs', []))} runs that finished.", ""]
    lines += ["## Protocol", "", PROTOCOL, "",
              f"Here: {metrics.get('users')} users, S = {metrics.get('stream_length')}, N = "
              f"{metrics.get('num_candidates')}, K = {metrics.get('slate_size')}, cloud_lag = {metrics.get('cloud_lag')}, "
              f"seeds {metrics.get('seeds')}; cloud generator `{metrics.get('generator')}`, device SRM "
              f"`{metrics.get('srm')}`; cloud calls {metrics.get('mode')} ({metrics.get('backend')} backend). "
              + _fusion_text(cfg) + _policy_text(cfg), "",
              "## The bars", ""] + _bar_lines(metrics.get("bars", {})) + ["",
              "## Headline (mean over seeds)", ""] + headline_lines(metrics) + ["",
              "## All results", ""] + results_table(agg, metrics.get("device_only")) + [""]
    popularity = popularity_lines(metrics)
    if popularity:
        lines += ["## By the target's popularity (NDCG@10, mean over seeds)", "",
                  "Stream events grouped by how many interactions the target item has in the device's training "
                  "data (protocol B's past; with protocol C, the cold items' events first): where the cloud's "
                  "knowledge helps, and where the device's does.", ""]
        lines += popularity + [""]
    net = cfg.get("network", {})
    lines += ["## Network and freshness", "",
              f"Modelled link: median RTT {net.get('latency_ms')} ms (lognormal sigma {net.get('latency_sigma')}), "
              f"{net.get('bandwidth_mbps')} Mbit/s, loss {net.get('loss')}, outages {net.get('outages')} (fractions of "
              f"the replay's time span), delivery '{net.get('deliver')}'. A stale slate is one shown while the "
              "device's last request failed (lost, outage, timeout) or is still in flight; the device keeps "
              "serving its cached list.", ""]
    lines += ["## How the replay runs", "",
              "Each user is a real `device.runtime.session.DeviceSession` (driven mode) holding the exported SRM through "
              "the device runtime. Without re-training users are independent, so the engine replays the t-th "
              "event of every user, then sends all requests of that round in one batch (in-process: one batched "
              "`generate`; gRPC: concurrent calls that the server micro-batches); a test proves this gives the "
              "rows of the strict event-by-event global time order. In-process runs memoise the cloud's list per "
              "history and the SRM's catalogue scores per history (candidates are scored independently; checked "
              "against direct scoring at start-up), so the grid's runs share that work; gRPC runs call the "
              "server for every request. Re-training runs go event by event on the global clock.", ""]
    if metrics.get("calibration"):
        lines += ["## Calibration", "", "| budget | threshold | rate on the calibration replay |", "|---|---|---|"]
        lines += [f"| {float(b):.0%} | {v['threshold']:.3f} | {v['calibration_rate']:.3f} |"
                  for b, v in metrics["calibration"].items()] + [""]
    updates = [r for r in metrics.get("runs", []) if r.get("retrain")]
    if updates:
        lines += ["## Adaptive re-training", ""]
        for r in updates:
            base = _find(agg, r["policy"], r["fusion"], r.get("budget"))
            lines.append(f"- {r['id']}: NDCG@10 {r['ndcg@10']:.4f} with re-training vs "
                         f"{_fmt(base['ndcg@10'] if base else None)} without; {len(r.get('model_updates', []))} model "
                         f"versions pushed ({sum(u['download_bytes'] for u in r.get('model_updates', []))} bytes to devices).")
        lines.append("")
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + ["",
              f"Wall time: {metrics.get('wall_s', 0):.1f} s. Per-step rows: `rows/<run>.csv`; every figure: "
              "`metrics.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fusion_text(cfg: dict) -> str:
    """The fusion rule of the config, in words taken from the device's norms (defaults: the config's)."""
    llm, srm = cfg.get("llm_norm", "rank"), cfg.get("srm_norm", "prob")
    llm = LLM_NORMS.get(llm).text if llm in LLM_NORMS else llm
    srm = SRM_NORMS.get(srm).text if srm in SRM_NORMS else srm
    return f"Fusion: alpha = {cfg.get('alpha')} x {llm} + (1 - alpha) x {srm}. "


def _policy_text(cfg: dict) -> str:
    measure = cfg.get("measure", "lsc4rec")
    described = MEASURES.get(measure).text if measure in MEASURES else measure
    how = ("one threshold per budget from the calibration replay" if cfg.get("budget_mode", "threshold") == "threshold"
           else "device.runtime.policies.budget.Budget shared by the fleet, warm-started with the calibration replay's "
                "score percentiles and steered online to the budget; decisions follow global time order")
    return (f"Consistency-under-budget (policy '{HEADLINE_POLICY}'): request when the inconsistency score "
            f"({described}) is high; {how}. The calibration replay moves each user's stream S interactions back (no "
            f"stream event is used). '{MATCHED_RANDOM}' requests at random at the realised rate of the budget run with "
            "the same budget, fusion and seed.")


def _cdf_runs(metrics: dict) -> list[str]:
    ids = [r["id"] for r in metrics.get("runs", []) if r["fusion"] == "fusion" and r["seed"] == metrics["seeds"][0]
           and r["policy"] in (HEADLINE_POLICY, "always") and r.get("budget") in (None, 0.2)]
    return ids[:3]
