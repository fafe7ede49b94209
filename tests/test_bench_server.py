"""benchmarks.bench_server: which LLM the load figures run against."""
from benchmarks.bench_server import find_llm


def _run(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_find_llm_takes_a_run_or_the_first_run_of_a_folder_in_the_order_given(tmp_path):
    demo = _run(tmp_path / "demo" / "llm")
    assert find_llm([tmp_path / "llm-compact", tmp_path / "demo" / "llm"]) == demo  # the first is missing
    runs = tmp_path / "llm-compact"
    _run(runs / "b-s1")
    first = _run(runs / "a-s0")
    assert find_llm([runs, demo]) == first  # a folder of runs: its first run, ahead of later folders


def test_find_llm_is_none_without_a_trained_run(tmp_path):
    (tmp_path / "empty").mkdir()
    assert find_llm([tmp_path / "empty", tmp_path / "missing"]) is None
