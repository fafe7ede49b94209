"""Adaptive re-training on the virtual clock: fine-tune on what devices saw, export, publish, reload.

With the numpy stand-in SRM the "fine-tuning" refits its transition counts; with a real SRM it runs
the SRM issue's fine-tuning (warm start from the deployed checkpoint), exports ONNX, publishes it into
the cloud's models folder and loads it back through the device runtime (manifest verified), which is
what every device does when ModelService reports a new version.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from device.runtime.artifact import load_reranker
from shared.errors import ConfigError
from simulator.models import MarkovReranker


def make_retrainer(world, config) -> Callable[[Sequence[np.ndarray]], tuple[object, int]]:
    """A function histories -> (new reranker, artifact bytes)."""
    if isinstance(world.reranker, MarkovReranker):
        return MarkovRetrainer(world.dataset.num_items)
    return SrmRetrainer(world, config)


class MarkovRetrainer:
    def __init__(self, num_items: int):
        self.num_items, self.count = num_items, 0

    def __call__(self, histories):
        self.count += 1
        model = MarkovReranker(self.num_items, version=f"markov-{self.count}").fit(histories)
        return model, int(model.trans.nbytes // 8)  # a sparse transition table is about this size


class SrmRetrainer:
    """device.training.finetune (as `train srm --resume --fresh` runs it) -> device.training.export -> cloud.registry.publish
    -> device.runtime.load_reranker (the manifest is verified, as a device does after ModelService)."""

    def __init__(self, world, config):
        self.world, self.config = world, config
        self.ckpt = _checkpoint_of(Path(config.srm))
        self.work = Path(tempfile.mkdtemp(prefix="lsc4rec-retrain-"))
        self.models_dir = self.work / "models"
        self.count = 0

    def __call__(self, histories):
        from cloud.registry import publish  # torch and the cloud: loaded only when a real SRM is re-trained
        from device.training.export import export_checkpoint
        from device.training.finetune import finetune

        self.count += 1
        step = self.work / f"v{self.count}"
        dataset, past = self.world.dataset, self.world.streams.past
        # Each device's whole known sequence; the loss is taken on the stream events seen so far only.
        ckpt, _ = finetune(self.ckpt, [np.asarray(h) for h in histories], self.config.retrain.budget_s,
                           step / "ckpt", first_fresh=[len(p) for p in past], vocab_hash=dataset.vocab_hash,
                           return_figures=True, max_epochs=self.config.retrain.epochs)
        self.ckpt = Path(ckpt)
        exported = Path(export_checkpoint(self.ckpt, ("onnx",), step / "export")["onnx"])
        published = publish(exported, self.models_dir)  # what ModelService would now offer
        model = load_reranker(published, vocab_hash=dataset.vocab_hash)  # a device verifies, then loads
        size = sum(p.stat().st_size for p in Path(published).iterdir() if p.is_file())
        return model, size


def _checkpoint_of(folder: Path) -> Path:
    """The SRM checkpoint behind an exported folder (the demo keeps srm.pt beside onnx/)."""
    for candidate in (folder / "srm.pt", folder.parent / "srm.pt"):
        if candidate.is_file():
            return candidate
    raise ConfigError("retrain.every", "on", f"no SRM checkpoint srm.pt in {folder} or its parent")
