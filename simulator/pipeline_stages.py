"""Running the pipeline's stages and remembering them: a stage is finished when its marker file exists, and
OUT/stages.json records what each finished stage was made from, so that a re-run reuses it only when nothing
changed. A training stage runs as its own `lsc4rec` process."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from simulator.pipeline_plan import REPO, PipelineError, Plan


class Stages:
    """Finished-stage bookkeeping. A stage is finished when its marker file exists; OUT/stages.json records the
    settings and the upstream stages each one was made from, so that a re-run with other settings refuses to reuse
    it (a folder finished before this record existed is reused as it is)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.path = plan.out / "stages.json"
        self.saved: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.current: dict = {}  # this run's stamp of every stage so far (None: finished before the record)
        self.timings: dict = {}

    def stamp(self, settings: dict, after: tuple[str, ...]) -> dict:
        return {"settings": settings, "after": {k: _digest(self.current.get(k)) for k in after}}

    def run(self, key: str, label: str, marker: Path, settings: dict, action: Callable[[], object],
            after: tuple[str, ...] = (), reused: bool = False, announce: bool = True) -> float:
        stamp = self.stamp(settings, after)
        began = time.perf_counter()
        if marker.exists():
            old = None if reused else self.saved.get(key)
            if old is not None and old != stamp:
                raise PipelineError(f"{marker.parent} holds a finished '{label}' made {_difference(old, stamp)}; "
                                    f"delete it to redo that stage, or choose another --out")
            self.current[key] = {"reused": str(marker)} if reused else old
            self.plan.say(f"{label}: cached ({marker})")
            self.timings[key] = 0.0
            return 0.0
        if announce:
            self.plan.say(f"{label} ...")
        action()
        self.record(key, stamp)
        took = time.perf_counter() - began
        self.plan.say(f"{label}: {took:.0f} s")
        self.timings[key] = took
        return took

    def fresh(self, key: str, stamp: dict) -> bool:
        """A finished simulation may be reused: no record of it, or the same one."""
        old = self.saved.get(key)
        return old is None or old == stamp

    def record(self, key: str, stamp: dict) -> None:
        self.current[key] = self.saved[key] = stamp
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.saved, indent=1, sort_keys=True))
        tmp.replace(self.path)


def _digest(stamp) -> str:
    return "" if stamp is None else hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _difference(old: dict, new: dict) -> str:
    if old.get("settings") != new.get("settings"):
        return f"with other settings (then: {_short(old.get('settings'))}; now: {_short(new.get('settings'))})"
    changed = sorted(k for k in set(old.get("after", {})) | set(new.get("after", {}))
                     if old.get("after", {}).get(k) != new.get("after", {}).get(k))
    return f"from other inputs (redone since: {', '.join(changed)})"


def _short(settings) -> str:
    command = isinstance(settings, dict) and "command" in settings
    text = " ".join(settings["command"]) if command else json.dumps(settings)
    return text if len(text) <= 300 else text[:300] + "..."


def run_cli(*args: str, log: Path) -> None:
    """Run one `lsc4rec` stage as its own process (progress bars to the terminal, a copy of stderr in a log)."""
    cmd = [sys.executable, "-m", "simulator.cli", *args]
    print(f"$ lsc4rec {' '.join(args)}", file=sys.stderr, flush=True)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"stage failed ({proc.returncode}): lsc4rec {' '.join(args)}\n{tail}")
