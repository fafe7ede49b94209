"""Protocol B replay: metrics on the slate before each event, requests counted, determinism, report files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from device.runtime.policies import POLICIES, Decision, RequestPolicy
from shared.records import Candidate
from simulator.config import load_sim_config
from device.runtime.policies import PolicySpec
from simulator.experiments import load_world, make_replay, run_one
from simulator.run import simulate
from tests.simulator.conftest import small_overrides


class RingOracle:
    """Knows the synthetic ring walk: after item i comes i + 1, then i + 2, ... (skipping the history)."""

    version = "ring-oracle"

    def __init__(self, num_items: int):
        self.num_items = num_items

    def generate(self, histories, n, excludes=None):
        out = []
        for hist in histories:
            last, seen, picked = (hist[-1] if hist else 1), set(hist), []
            for step in range(1, self.num_items + 1):
                item = (last - 1 + step) % self.num_items + 1
                if item not in seen:
                    picked.append(Candidate(item, -float(step)))
                if len(picked) == n:
                    break
            out.append(picked)
        return out


def _world(tiny_dir, *extra, generator=None):
    config = load_sim_config(None, small_overrides(tiny_dir, *extra))
    return load_world(config, generator=generator)


def test_fresh_lists_help_an_oracle_cloud_and_rates_are_counted(tiny_dir):
    world = _world(tiny_dir, generator=RingOracle(60))
    results = {}
    for name in ("always", "never"):
        run = {"policy": name, "fusion": "llm", "seed": 0}
        results[name] = run_one(world, run, PolicySpec(name), None, progress=False).summary
    # The list asked right after event t holds item t + 1 first: a fresh list makes most slates hit,
    # which can only happen if the slate is scored against the event that follows it.
    assert results["always"]["request_rate"] == 1.0
    assert results["always"]["ndcg@10"] > 0.5
    assert results["never"]["request_rate"] < 0.2  # only forced requests (fewer than K candidates left)
    assert results["always"]["ndcg@10"] > results["never"]["ndcg@10"] + 0.2
    assert results["always"]["bytes_up_per_event"] > 0 and results["always"]["bytes_down_per_event"] > 0


def test_initial_list_comes_from_what_the_cloud_saw(tiny_dir):
    world = _world(tiny_dir)
    seen = []

    class Spy:
        def fetch(self, requests):
            seen.extend(requests)
            return world.source.fetch(requests)

    replay = make_replay(world, progress=False)
    replay.source = Spy()
    replay.initial_lists()
    assert [r.history for r in seen] == [tuple(int(i) for i in h) for h in world.streams.cloud_seen]
    assert all(len(p) - len(c) == 2 for p, c in zip(world.streams.past, world.streams.cloud_seen))


def test_slates_never_hold_consumed_items_and_runs_repeat(tiny_dir):
    world = _world(tiny_dir)
    run = {"policy": "random", "fusion": "fusion", "seed": 4}
    first = run_one(world, run, PolicySpec("random", rate=0.3, seed=4), None, progress=False)
    again = run_one(world, run, PolicySpec("random", rate=0.3, seed=4), None, progress=False)
    assert first.summary == again.summary
    assert np.array_equal(first.rows["requested"], again.rows["requested"])
    # events come in global time order
    assert np.all(np.diff(first.rows["ts"]) >= 0)
    # request rate = requests after session start / steps
    assert first.summary["request_rate"] == pytest.approx(first.rows["requested"].mean())


def test_outage_and_loss_make_stale_slates_and_failed_requests(tiny_dir):
    world = _world(tiny_dir, "network.outages=[[0.0, 0.5]]", "network.loss=0.2")
    run = {"policy": "always", "fusion": "fusion", "seed": 0}
    summary = run_one(world, run, PolicySpec("always"), None, progress=False).summary
    assert summary["failed_requests"] > 0 and summary["stale_slates"] > 0
    clean = run_one(_world(tiny_dir), run, PolicySpec("always"), None, progress=False).summary
    assert clean["failed_requests"] == 0 and clean["stale_slates"] == 0


def test_retraining_pushes_new_versions_to_every_device(tiny_dir):
    world = _world(tiny_dir, "retrain.every=40")
    from simulator.retrain import make_retrainer

    run = {"policy": "never", "fusion": "srm", "seed": 0}
    result = run_one(world, run, PolicySpec("never"), None, retrain=(40, make_retrainer(world, world.config)),
                     progress=False)
    versions = list(dict.fromkeys(result.rows["model"]))
    assert len(result.summary["model_updates"]) == len(versions) - 1 >= 2
    assert world.scorer.version == versions[-1]


def test_simulate_writes_metrics_rows_report_and_plots(tiny_dir, tmp_path):
    config = load_sim_config(None, small_overrides(tiny_dir, "policies=['never', 'always', 'budget']"))
    out = tmp_path / "sim"
    metrics = simulate(config, out, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "complete" and saved["protocol"] == "B"
    ids = {r["id"] for r in saved["runs"]}
    assert "budget-fusion-b20-s0" in ids and "random-matched-fusion-b20-s0" in ids
    matched = next(r for r in saved["runs"] if r["id"] == "random-matched-fusion-b20-s0")
    twin = next(r for r in saved["runs"] if r["id"] == "budget-fusion-b20-s0")
    assert matched["label"] == f"random:{twin['request_rate']:.3f}"
    assert twin["label"] == f"threshold:{twin['threshold']:.3f}"  # budget_mode "threshold": the calibrated one
    report = (out / "report.md").read_text()
    assert "Protocol B" in report and "NOT MET" in report or "MET" in report
    assert (out / "ndcg_vs_rate.png").stat().st_size > 1000
    assert (out / "rows" / "always-fusion-s0.csv").is_file()
    assert metrics["device_only"]["ndcg@10"] >= 0
    # every run carries each user's NDCG@10; the bars quote paired differences with an interval
    assert np.mean(twin["per_user_ndcg@10"]) == pytest.approx(twin["ndcg@10"], abs=1e-5)
    assert len(twin["per_user_ndcg@10"]) == twin["users"]
    paired = saved["bars"]["collaboration_beats_either_side"]["paired"]
    assert set(paired) == {"llm_only", "srm_only", "device_only"}
    assert paired["device_only"]["diff"] == pytest.approx(twin["ndcg@10"] - metrics["device_only"]["ndcg@10"],
                                                          abs=1e-5)
    assert "Paired over users" in report
    # the popularity breakdown: buckets cover every event, weighted back they give the run's NDCG@10
    buckets = twin["by_popularity"]
    assert sum(b["events"] for b in buckets.values()) == twin["steps"]
    assert sum(b["ndcg@10"] * b["events"] for b in buckets.values()) / twin["steps"] == pytest.approx(twin["ndcg@10"])
    assert "By the target's popularity" in report and (out / "ndcg_by_popularity.png").stat().st_size > 1000


def test_interrupt_keeps_finished_runs_readable(tiny_dir, tmp_path, monkeypatch):
    import simulator.run as run_module

    calls = {"n": 0}
    real = run_module.execute

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "execute", flaky)
    config = load_sim_config(None, small_overrides(tiny_dir, "policies=['never', 'always']", "device_only=false"))
    out = tmp_path / "sim"
    with pytest.raises(KeyboardInterrupt):
        simulate(config, out, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "interrupted" and len(saved["runs"]) == 2
    assert saved["stopped_at"] == saved["runs"][-1]["id"].replace("never", "never") or saved["stopped_at"]
    assert "interrupted" in (out / "report.md").read_text()


LATE = ("network.loss=0.3", "network.deliver='clock'", "network.latency_ms=120000", "network.timeout_ms=1e6")


@pytest.mark.parametrize("extra", [(), LATE])
def test_rounds_give_the_rows_of_strict_global_order(tiny_dir, extra):
    """The batched rounds path (no re-training) equals the event-by-event global-order path."""
    world = _world(tiny_dir, *extra)
    policy = PolicySpec("random", rate=0.4, seed=1)
    rounds = make_replay(world, seed=1, progress=False).run(policy, "fusion", 1)
    never_retrains = (10 ** 9, lambda histories: pytest.fail("no re-training expected"))
    strict = make_replay(world, seed=1, retrain=never_retrains, progress=False).run(policy, "fusion", 1)
    if extra:
        assert rounds.rows["stale"].sum() > 0  # late and lost answers happen in this variant
    for field in rounds.rows:
        assert np.array_equal(rounds.rows[field], strict.rows[field], equal_nan=field in ("score", "latency_ms")), field


class _NthEvent(RequestPolicy):
    """A toy policy from outside the device package: one request, on the n-th event of each device (n from the
    budget: n = round(1 / rate))."""

    name = "nth-event"
    usage = "nth-event:N"
    budgeted = True

    def __init__(self, n: int):
        self.n = n

    def _decide(self, state):
        return Decision(state.event_index == self.n, f"event {state.event_index} of {self.n}", state.score)

    def label(self) -> str:
        return f"nth-event:{self.n}"

    @classmethod
    def from_spec(cls, spec):
        return cls(int(round(1 / spec.rate)))


def test_a_policy_registered_in_a_test_runs_end_to_end_through_the_simulator(tiny_dir, tmp_path):
    with POLICIES.registered("nth-event", _NthEvent):
        config = load_sim_config(None, small_overrides(tiny_dir, "policies=['nth-event', 'never']",
                                                       "fusions=['fusion']", "device_only=false"))
        simulate(config, tmp_path / "sim", progress=False)
    saved = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    runs = {r["id"]: r for r in saved["runs"]}
    assert set(runs) == {"nth-event-fusion-b20-s0", "nth-event-fusion-b50-s0", "never-fusion-s0"}
    assert runs["never-fusion-s0"]["requests"] == 0  # nothing forced on this grid: every request below is the toy's
    for budget, n in ((20, 5), (50, 2)):
        run = runs[f"nth-event-fusion-b{budget}-s0"]
        assert run["label"] == f"nth-event:{n}" and run["requests"] == run["users"] == 30
        with (tmp_path / "sim" / "rows" / f"nth-event-fusion-b{budget}-s0.csv").open() as fh:
            requested_steps = {int(row["step"]) for row in csv.DictReader(fh) if row["requested"] == "True"}
        assert requested_steps == {n - 1}  # its decisions took effect: one request per device, after event n
    assert "nth-event" in (tmp_path / "sim" / "report.md").read_text()
    assert "nth-event" not in POLICIES
