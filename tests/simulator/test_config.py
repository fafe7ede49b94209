"""Presets: unknown keys and impossible values are refused before any work, naming key and value."""
from __future__ import annotations

import pytest

from shared.errors import ConfigError
from simulator.config import PRESET_DIR, load_sim_config
from simulator.experiments import load_world
from tests.simulator.conftest import small_overrides


@pytest.mark.parametrize("override, key", [
    ("budgets=[-0.1]", "budgets"),
    ("budgets=[1.5]", "budgets"),
    ("slate_size=60", "slate_size"),  # K > N
    ("policies=['sometimes']", "policies"),
    ("fusions=['mean']", "fusions"),
    ("network.loss=1.5", "network.loss"),
    ("network.outages=[[0.6, 0.2]]", "network.outages"),
    ("retrain.every=-1", "retrain.every"),
    ("no_such_key=1", "no_such_key"),
    ("network.jitter=3", "network.jitter"),
    ("measure='footfall'", "measure"),
    ("budget_mode='sometimes'", "budget_mode"),
    ("srm_norm='softmax'", "srm_norm"),
    ("llm_norm='logit'", "llm_norm"),
    ("threshold=inf", "threshold"),
])
def test_bad_values_are_refused_naming_key_and_value(override, key):
    with pytest.raises(ConfigError) as info:
        load_sim_config(None, [override])
    assert info.value.key == key
    assert override.split("=", 1)[1].strip("[]'").split(",")[0] in str(info.value)


@pytest.mark.parametrize("override, key, known", [
    ("policies=['every-n']", "policies", "always, budget, every, never, random, threshold"),
    ("policies=['consistency']", "policies", "always, budget, every, never, random, threshold"),
    ("policies=['never', 'consistency-budget']", "policies", "always, budget, every, never, random, threshold"),
    ("srm_norm='sigmoid'", "srm_norm", "logit, prob, rank"),
])
def test_old_spellings_are_refused_with_the_device_names(override, key, known):
    """One spelling everywhere: the simulator takes the device's registry names and maps nothing."""
    with pytest.raises(ConfigError) as info:
        load_sim_config(None, [override])
    old = override.split("=", 1)[1].strip("[]").split(", ")[-1].strip("'")
    assert info.value.key == key and info.value.value == old and f"known: {known}" in str(info.value)


def test_every_shipped_preset_loads():
    for path in sorted(PRESET_DIR.glob("*.toml")):
        load_sim_config(path.stem)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="quick"):
        load_sim_config("no-such-preset")


def test_stream_longer_than_histories_is_refused_before_loading_models(tiny_dir):
    config = load_sim_config(None, small_overrides(tiny_dir, "stream_length=40", 'llm="/nonexistent"'))
    with pytest.raises(ConfigError) as info:
        load_world(config)  # the data check comes first: the missing LLM folder is never touched
    assert info.value.key == "stream_length" and info.value.value == 40


def test_too_many_candidates_for_the_catalogue_is_refused(tiny_dir):
    config = load_sim_config(None, small_overrides(tiny_dir, "num_candidates=50", "slate_size=5"))
    with pytest.raises(ConfigError) as info:
        load_world(config)
    assert info.value.key == "num_candidates"


def test_ray_backend_without_ray_is_a_clear_error(tiny_dir, tmp_path):
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed")
    except ImportError:
        pass
    from simulator.run import simulate

    config = load_sim_config(None, small_overrides(tiny_dir, "backend='ray'", "policies=['never']", "fusions=['llm']",
                                                   "device_only=false"))
    with pytest.raises(ConfigError, match="pip install"):
        simulate(config, tmp_path / "out", progress=False)


def test_fusion_norms_reach_the_device_fusion_and_the_report():
    from device.runtime.fusion import FusionConfig
    from simulator.device_adapter import fusion_config
    from simulator.report import _fusion_text

    config = load_sim_config("demo")
    assert fusion_config("fusion", config.alpha, config.srm_norm, config.llm_norm) == FusionConfig(
        rule="linear", alpha=config.alpha, llm_norm="logprob", srm_norm="logit")
    assert fusion_config("fusion", 0.5, "prob") == FusionConfig(rule="reference")
    assert fusion_config("fusion", 0.5, "prob", "softmax") == FusionConfig("linear", 0.5, "softmax", "prob")
    assert fusion_config("fusion", 0.2, "rank") == FusionConfig(rule="linear", alpha=0.2, srm_norm="rank")
    assert fusion_config("srm", 0.2, "logit", "logprob") == FusionConfig(rule="srm")
    assert "LLM log-probability" in _fusion_text({"alpha": 0.35, "srm_norm": "logit", "llm_norm": "logprob"})
    assert "SRM sigmoid" in _fusion_text({"alpha": 0.5})  # presets written before the norms existed


def test_sweep_runs_each_setting_on_one_world_and_ranks_them(tiny_dir, tmp_path, monkeypatch, capsys):
    import json

    import simulator.run as run
    from simulator.cli import main

    loads = []
    real_load_world = run.load_world
    monkeypatch.setattr(run, "load_world", lambda *a, **k: loads.append(k) or real_load_world(*a, **k))
    argv = ["simulate", "--preset", "quick", "--out", str(tmp_path / "sw"), "--quiet", "--json",
            "--sweep", "alpha=0.2,0.8", "--sweep", "srm_norm=rank,logit"]
    for override in small_overrides(tiny_dir, "policies=['budget']", "fusions=['fusion']",
                                    "device_only=false", "matched_random=false"):
        argv += ["--set", override]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out)
    record = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    names = {"alpha=0.2,srm_norm=rank", "alpha=0.2,srm_norm=logit", "alpha=0.8,srm_norm=rank",
             "alpha=0.8,srm_norm=logit"}
    assert {r["setting"] for r in record["results"]} == names and figures["best"] == record["results"][0]["setting"]
    means = [r["mean_fusion_ndcg@10"] for r in record["results"]]
    assert means == sorted(means, reverse=True) and all(set(r["fusion_ndcg@10_by_budget"]) == {"0.2", "0.5"}
                                                        for r in record["results"])
    for name in names:  # each setting's own full simulation, with its own fusion in the record
        config = json.loads((tmp_path / "sw" / name / "config.json").read_text())
        assert (config["alpha"], config["srm_norm"]) == (float(name[6:9]), name.split("srm_norm=")[1])
    assert len(loads) == 4 and loads[0] == {} and all(k["source"] is not None for k in loads[1:])  # lists shared


@pytest.mark.parametrize("spec, fragment", [("data=a,b", "can vary only"), ("alpha=", "KEY=V1,V2")])
def test_sweep_refuses_settings_that_change_the_world(spec, fragment):
    from simulator.run import parse_sweep

    with pytest.raises(ConfigError, match=fragment):
        parse_sweep([spec])


def test_protocol_c_refuses_models_trained_with_the_cold_items(tmp_path):
    from simulator.experiments import check_cold_models

    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text('{"train": {"protocol": "stream", "cold_seed": 0, "cold_fraction": 0.1}}')
    with pytest.raises(ConfigError, match="protocol"):
        check_cold_models(load_sim_config(None, [f'llm="{llm}"', "cold_seed=0"]))
    (llm / "config.json").write_text('{"train": {"protocol": "cold-stream", "cold_seed": 1, "cold_fraction": 0.1}}')
    with pytest.raises(ConfigError, match="cold_seed = 1"):
        check_cold_models(load_sim_config(None, [f'llm="{llm}"', "cold_seed=0"]))
    check_cold_models(load_sim_config(None, [f'llm="{llm}"', "cold_seed=1"]))  # the same draw passes
    with pytest.raises(ConfigError, match="srm.pt"):
        check_cold_models(load_sim_config(None, [f'llm="{llm}"', f'srm="{tmp_path}"', "cold_seed=1"]))
