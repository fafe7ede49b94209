"""Consistency measures and the adaptive budget in the replay: scores as defined, causal order, rate on budget."""
from __future__ import annotations

import numpy as np
import pytest


from dataclasses import dataclass

from device.runtime.consistency import catalogue_regret
from device.runtime.policies import Calibration, PolicySpec
from shared.sequences import pad_left
from simulator.config import load_sim_config
from simulator.experiments import calibrate, load_world, make_replay, plan, policy_for, run_one
from tests.simulator.conftest import small_overrides


def _world(tiny_dir, *extra):
    return load_world(load_sim_config(None, small_overrides(tiny_dir, *extra)))


def test_regret_sessions_score_the_whole_catalogue(tiny_dir):
    world = _world(tiny_dir, "measure='regret'")
    replay = make_replay(world, progress=False)
    sessions = replay.sessions(PolicySpec("never").build(), "fusion", replay.initial_lists())
    s = world.streams
    for u in (0, 7):
        sess = sessions[u]
        for t in range(3):
            sess.on_event(int(s.items[u, t]))
            hist = np.concatenate([s.past[u], s.items[u, :t + 1]])
            logits = world.scorer.catalogue_scores(pad_left([hist], world.scorer.history_length))[0]
            alive = np.array([i for i in sess._items if i not in set(hist.tolist())])
            want = catalogue_regret(np.where(np.isfinite(logits), logits, 0.0), alive, hist, k=5)
            assert sess.last_score == pytest.approx(want)
            assert 0.0 <= sess.last_score <= 1.0


@dataclass(frozen=True)
class _Recording(PolicySpec):
    """A budget policy that records the order of its decisions."""

    def build(self):
        inner, log = super().build(), self.calibration_log

        class Recorder:
            name, fleet_state, label = inner.name, inner.fleet_state, inner.label

            def decide(self, state):
                log.append((state.user_id, state.event_index))
                return inner.decide(state)

        return Recorder()

    calibration_log: list = None  # type: ignore[assignment]


def test_a_fleet_wide_budget_decides_in_global_time_order(tiny_dir):
    world = _world(tiny_dir)
    log: list = []
    spec = _Recording("budget", rate=0.3, seed=0, calibration=Calibration(np.inf, tuple(np.linspace(0, 40, 101)),
                                                                          adaptive=True), calibration_log=log)
    assert spec.build().fleet_state and not PolicySpec("random", rate=0.3).build().fleet_state
    run_one(world, {"policy": "budget", "fusion": "fusion", "seed": 0}, spec, None, progress=False)
    s = world.streams
    assert log == [(str(int(s.users[u])), int(t) + 1) for u, t in s.order]


@pytest.mark.parametrize("measure", ["miss", "miss-depth", "srm-miss-depth", "list-belief", "miss-belief",
                                     "held-regret", "held-mass"])
def test_context_measures_score_in_sessions_as_in_the_calibration_table(tiny_dir, measure):
    """The calibration table's scores of the initial list (k = 0) are what a session holding it scores."""
    from simulator.cloud_link import MemoSource
    from simulator.experiments import _score_table

    world = _world(tiny_dir, f"measure='{measure}'")
    replay = make_replay(world, progress=False)
    initial = replay.initial_lists()
    sessions = replay.sessions(PolicySpec("never").build(), "fusion", initial)
    table = _score_table(world, world.streams, world.source if isinstance(world.source, MemoSource)
                         else MemoSource(world.source))
    s = world.streams
    for u in range(min(5, len(s.users))):
        for t in range(s.items.shape[1]):
            sessions[u].on_event(int(s.items[u, t]))
            want = table[u][0][t, 0]
            if np.isfinite(want):
                assert sessions[u].last_score == pytest.approx(want, rel=1e-6, abs=1e-9), (u, t)


@pytest.mark.parametrize("measure", ["regret", "footrule", "lsc4rec"])
def test_adaptive_budget_runs_near_its_rate(tiny_dir, measure):
    config = load_sim_config(None, small_overrides(tiny_dir, f"measure='{measure}'", "budget_mode='adaptive'",
                                                   "policies=['budget']", "fusions=['fusion']"))
    world = load_world(config)
    thresholds = calibrate(world, config.budgets, progress=False)
    for budget, cal in thresholds.items():
        assert len(cal["score_percentiles"]) == 101 and np.all(np.diff(cal["score_percentiles"]) >= 0)
    for run in plan(config):
        if run["policy"] != "budget":
            continue
        spec = policy_for(run, config, thresholds, {})
        assert spec.name == "budget" and spec.rate == run["budget"]
        rate = run_one(world, run, spec, None, progress=False).summary["request_rate"]
        assert abs(rate - run["budget"]) < 0.1, (measure, run["budget"], rate)


def test_report_names_the_measure_and_budget_mode():
    from simulator.report import _policy_text

    default = _policy_text({})
    assert "(4 + 0.3 Z)^2" in default and "one threshold per budget" in default
    chosen = _policy_text({"measure": "regret", "budget_mode": "adaptive"})
    assert "catalogue regret" in chosen and "steered online" in chosen
