"""Adaptive re-training: warm-start a deployed SRM on events newer than its training data, within seconds."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from device.training.artifacts import CHECKPOINT_NAME, load_checkpoint, make_checkpoint, save_checkpoint
from device.training.train import Epoch, fit, seed_everything, train_config_from, training_epoch, validate, window_loss
from shared.data.splits import Examples
from shared.errors import DataFormatError, InvalidArgumentError, UnknownItemError


def finetune(ckpt: str | Path, fresh_sequences: Sequence[np.ndarray], budget_s: float, out: str | Path,
             first_fresh: Sequence[int] | None = None, vocab_hash: str | None = None, lr: float = 5e-4,
             valid: Examples | None = None, seed: int = 0, return_figures: bool = False,
             max_epochs: int | None = None):
    """Fine-tune `ckpt` on `fresh_sequences` for at most `budget_s` seconds (and at most `max_epochs` passes
    when given); write a new versioned checkpoint.

    Each sequence is one user's items, oldest first. If `first_fresh[i]` is given, positions before it are
    context only: the loss is taken on next items at index >= first_fresh[i] (the new events). The new
    checkpoint records its parent's version; `out` is a folder (OUT/srm.pt) or a file path.
    Returns the path (and a figures dict when `return_figures`).
    """
    if budget_s <= 0:
        raise InvalidArgumentError("budget_s", budget_s, "must be positive")
    if max_epochs is not None and max_epochs < 1:
        raise InvalidArgumentError("max_epochs", max_epochs, "must be at least 1")
    model, parent = load_checkpoint(ckpt, vocab_hash)
    sequences = [np.asarray(s, dtype=np.int64) for s in fresh_sequences]
    _check_sequences(sequences, model.num_items)
    # The parent's recipe (loss, batch size, gradient clip, threads); the optimiser has no weight decay.
    config = train_config_from(parent, lr=lr, seed=seed, time_limit_s=float(budget_s))
    rng, gen = seed_everything(seed, config.threads)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def next_epoch() -> Epoch | None:
        epoch = training_epoch(model, sequences, config, rng, first_target=first_fresh)
        return epoch if len(epoch.batches) else None  # no fresh event has a next item: nothing to learn

    start = time.perf_counter()
    result = fit(model, optimizer, next_epoch, window_loss(config, gen), config, max_epochs, desc="finetune",
                 progress=False)
    figures = {"epochs": float(result.epochs), "seconds": time.perf_counter() - start, "loss": result.loss}
    if valid is not None:
        figures.update(validate(model, valid))
    fresh = np.concatenate(sequences) if sequences else np.zeros(0, int)
    ckpt_dict = make_checkpoint(parent["model"], model, config, parent["vocab_hash"], figures,
                                parent.get("protocol", "stream"), [figures], parent=parent.get("version"),
                                untrained=np.setdiff1d(parent.get("untrained_items", []), fresh))
    out = Path(out)
    path = save_checkpoint(ckpt_dict, out if out.suffix == ".pt" else out / CHECKPOINT_NAME)
    figures.update({"version": ckpt_dict["version"], "parent": parent.get("version")})
    return (path, figures) if return_figures else path


def _check_sequences(sequences: list[np.ndarray], num_items: int) -> None:
    """Something to learn (a sequence with a next item) and only the catalogue's ids, before any training."""
    if not any(len(s) >= 2 for s in sequences):
        raise InvalidArgumentError("fresh_sequences", len(sequences), "no sequence has a next item to learn")
    for row, seq in enumerate(sequences):
        if seq.size and (seq.min() < 1 or seq.max() > num_items):
            raise UnknownItemError(f"fresh_sequences[{row}]", int(seq[(seq < 1) | (seq > num_items)][0]),
                                   f"not an item id (catalogue is 1..{num_items})")


def read_fresh_events(path: str | Path, dataset) -> tuple[list[np.ndarray], list[int]]:
    """Fresh events (TSV user, item, timestamp with dense ids and a header) -> per-user sequences.

    Each user's sequence is their dataset events strictly older than their first fresh event (context),
    followed by the fresh events in time order; returns (sequences, index of the first fresh item).
    """
    try:
        table = np.loadtxt(path, dtype=np.int64, delimiter="\t", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, 0, "-", f"cannot read fresh events: {exc}") from None
    if table.size == 0:
        raise DataFormatError(path, 0, "-", "no fresh events")
    if table.shape[1] != 3:
        raise DataFormatError(path, 0, "-", f"expected 3 columns (user, item, timestamp), got {table.shape[1]}")
    for column, name, limit in ((0, "user", dataset.num_users), (1, "item", dataset.num_items)):
        bad = np.flatnonzero((table[:, column] < 1) | (table[:, column] > limit))
        if bad.size:
            raise DataFormatError(path, int(bad[0]) + 2, name, f"{table[bad[0], column]} outside 1..{limit}")
    table = table[np.lexsort((table[:, 2], table[:, 0]))]
    known = dataset.interactions
    sequences, first = [], []
    for user in np.unique(table[:, 0]):
        fresh = table[table[:, 0] == user]
        mine = known[known[:, 0] == user]
        context = mine[mine[:, 2] < fresh[0, 2], 1]
        sequences.append(np.concatenate([context, fresh[:, 1]]))
        first.append(len(context))
    return sequences, first
