"""Byte-flip / truncation mutants of the tiny model, installed through ModelHolder in a child process.

`python -m tests.reliability.mutants SPEC.json` is the child: for each case of the spec it offers
the artifact to a ModelHolder holding the good model (`check_for_update`), then checks the holder
still scores like the good model, and prints one JSON line per case:
{"name", "status": "rejected" | "updated" | "untyped", "error", "error_type", "same_output", "kept_good"},
and for an update "max_abs_diff" (NaN for non-finite scores) or "score_error" (a typed refusal to score).
A runtime that aborts (SIGSEGV, SIGABRT) ends the child, not the test: the parent sees the signal
and which case was last started.

The good folder's manifest chooses the mode. ONNX: the hand-built model of tests.reliability.models
(re-signed cases get `models.manifest_for`). Any other format (an exported ExecuTorch `.pte`, batch 1):
the expected scores are the good model's own, and a re-signed case gets the good manifest with the
case's sha256 and size, plus the case's optional "overrides" (manifest fields declared differently).
Each row also names the type of the error that rejected the case ("error_type").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutant: a flipped byte (XOR with a non-zero mask) or a truncation (possibly to 0 bytes)."""
    if rng.random() < 0.5:
        pos = int(rng.integers(len(data)))
        out = bytearray(data)
        out[pos] ^= int(rng.integers(1, 256))
        return f"flip@{pos}", bytes(out)
    cut = int(rng.integers(len(data)))
    return f"truncate@{cut}", data[:cut]


def write_cases(good: bytes, count: int, seed: int, folder: Path) -> Path:
    """Write `count` mutants (re-signed: the manifest carries the mutant's own sha256 and size)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for n in range(count):
        name, data = mutate(good, rng)
        path = folder / f"{n:05d}.bin"
        path.write_bytes(data)
        cases.append({"name": f"{n}:{name}", "bytes": str(path), "sign": True})
    spec = folder / "spec.json"
    spec.write_text(json.dumps(cases))
    return spec


@dataclass
class ChildResult:
    returncode: int
    rows: list[dict]
    stderr: str

    @property
    def crashed(self) -> bool:
        return self.returncode != 0


def run_child(good_folder: Path, spec: Path, root: Path, timeout_s: float = 600.0) -> ChildResult:
    """Run the child on a spec ([{"name", "bytes", "sign", "manifest"?}]); never raises on a crash."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tests.reliability.mutants", str(good_folder), str(spec), str(root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return ChildResult(proc.returncode, rows, proc.stderr[-4000:])


def summarize(rows: list[dict]) -> dict[str, int]:
    out = {"total": len(rows), "rejected": 0, "accepted_same_output": 0, "accepted_changed_output": 0,
           "untyped_error": 0, "good_model_lost": 0}
    for row in rows:
        if row["status"] == "rejected":
            out["rejected"] += 1
        elif row["status"] == "updated":
            out["accepted_same_output" if row["same_output"] else "accepted_changed_output"] += 1
        else:
            out["untyped_error"] += 1
        out["good_model_lost"] += not row["kept_good"]
    return out


def _child(good_folder: Path, spec: Path, root: Path) -> int:
    from device.runtime.artifact import ModelHolder, load_reranker
    from shared.errors import LSC4RecError
    from shared.manifest import manifest_from_dict, read_manifest
    from shared.records import ModelFormat
    from tests.reliability import models

    good_manifest = read_manifest(good_folder)
    onnx = good_manifest.format == ModelFormat.ONNX
    good = load_reranker(good_folder, vocab_hash=models.VOCAB_HASH if onnx else good_manifest.vocab_hash)
    rng = np.random.default_rng(0)
    batch, num_items = (2, models.NUM_ITEMS) if onnx else (1, good_manifest.num_items)
    # an exported model scores the last history slot's state: a padded (0) last slot gives all-zero scores
    history = rng.integers(0 if onnx else 1, num_items + 1, (batch, good.history_length))
    candidates = rng.integers(1, num_items + 1, (batch, 9))
    expected = models.reference_scores(history, candidates) if onnx else good.score(history, candidates)
    if np.ptp(expected) == 0:
        raise SystemExit(f"the probe input scores every candidate alike ({expected}): it cannot tell models apart")

    class Holder(ModelHolder):
        """Records the type of the error that made an install fail (check_for_update keeps only its text)."""

        error_type = ""

        def _install(self, *args, **kwargs):
            try:
                return super()._install(*args, **kwargs)
            except BaseException as exc:
                self.error_type = type(exc).__name__
                raise

    holder = Holder(good, root)
    for n, case in enumerate(json.loads(Path(spec).read_text())):
        data = Path(case["bytes"]).read_bytes()
        tmp = root / f"case-{n}"
        if case.get("manifest"):
            manifest = manifest_from_dict(case["manifest"])
        elif onnx:
            manifest = models.manifest_for(models.write_model_bytes(tmp, data) / "model.onnx")
        else:
            manifest = dataclasses.replace(good_manifest, sha256=hashlib.sha256(data).hexdigest(),
                                           size_bytes=len(data))
        if case.get("overrides"):
            manifest = dataclasses.replace(manifest, **_fields(case["overrides"]))
        manifest = _with_version(manifest, f"m{n}")
        row = {"name": case["name"], "status": "", "error": "", "error_type": "", "same_output": None}
        holder.error_type = ""
        try:
            result = holder.check_for_update(lambda current: manifest, lambda m: [data])
            row["status"], row["error"], row["error_type"] = result.status, result.reason[:200], holder.error_type
            if result.status == "updated":
                try:
                    got = holder.score(history, candidates)
                    row["same_output"] = bool(np.allclose(got, expected, atol=1e-5))
                    row["max_abs_diff"] = float(np.max(np.abs(got - expected)))  # NaN for a non-finite score
                except LSC4RecError as exc:  # a typed refusal to score (the session falls back)
                    row["same_output"], row["score_error"] = False, type(exc).__name__
                holder = Holder(good, root)  # back to the good model for the next case
        except Exception as exc:  # noqa: BLE001 - the finding: an error the runtime did not type
            row["status"], row["error"] = "untyped", f"{type(exc).__name__}: {exc}"[:200]
            row["error_type"] = type(exc).__name__
        row["kept_good"] = bool(np.allclose(holder.score(history, candidates), expected, atol=1e-5))
        print(json.dumps(row), flush=True)
    return 0


def _fields(overrides: dict) -> dict:
    """Manifest fields from their JSON form (TensorSpec lists become records) without validating them."""
    from shared.records import GoldenExample, TensorSpec

    out = dict(overrides)
    for name in ("inputs", "outputs"):
        if name in out:
            out[name] = tuple(TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in out[name])
    if out.get("golden"):
        out["golden"] = GoldenExample(*(tuple(out["golden"][f]) for f in ("history", "candidates", "scores")))
    return out


def _with_version(manifest, version: str):
    return dataclasses.replace(manifest, version=version)


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
