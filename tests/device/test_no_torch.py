"""The device runtime imports and runs a session in a process where `import torch` (and transformers) fails."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every module under device/runtime/ (the folder is the rule, not a list).
RUNTIME_MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                         for p in (ROOT / "device" / "runtime").rglob("*.py"))

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
""")

SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    try:
        import torch
        blocked = False
    except ImportError:
        blocked = True
    for name in {modules!r}:
        importlib.import_module(name)
    from device.runtime.policies import parse_policy
    from device.runtime.artifact import load_reranker
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.records import Candidate, CandidateResponse
    reranker = load_reranker({model!r})
    response = CandidateResponse(tuple(Candidate(i, -float(i)) for i in range(1, 13)), "g", 0.0)
    session = DeviceSession(SessionConfig(slate_size=5, num_candidates=12), reranker, parse_policy("budget:0.3"),
                            lambda: 0.0, candidates=response)
    slates = [list(session.on_event(item).slate.items) for item in (20, 1, 2, 21)]
    print(json.dumps({{"blocked": blocked, "slates": slates,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))}}))
""")


def _run(tmp_path, code):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_runtime_runs_a_session_where_torch_cannot_be_imported(tmp_path, onnx_dir):
    proc = _run(tmp_path, SCRIPT.format(modules=RUNTIME_MODULES, model=str(onnx_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blocked"], "the blocker did not work: the test would prove nothing"
    assert out["loaded"] == []
    assert all(len(s) == 5 for s in out["slates"])


def test_blocker_really_blocks_torch(tmp_path):
    proc = _run(tmp_path, "import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr
