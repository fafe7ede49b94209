"""Independent SRM training: full-softmax cross-entropy (default) or sampled losses, early stopping."""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from device.training.evaluate import evaluate, model_score_fn
from device.training.models import build_model
from device.training.models.common import dot_scores
from shared.config import check, from_dict, to_dict
from shared.data.splits import Examples, TrainSplit
from shared.errors import CatalogMismatchError, ConfigError
from shared.sequences import pad_left

CHECKPOINT_NAME = "srm.pt"
CHECKPOINT_FORMAT = "lsc4rec-srm/1"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the architecture is the model's own config)."""

    loss: Literal["ce", "bce", "sampled_ce"] = "ce"  # ce = full softmax over the catalogue
    negatives: int = 100  # uniform negatives per target for bce / sampled_ce
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0
    threads: int = 2  # torch intra-op threads
    time_limit_s: float = 0.0  # 0 = no limit; otherwise stop after this much training time
    grad_clip: float = 5.0

    def __post_init__(self):
        check(self.epochs >= 1, "epochs", self.epochs, "must be at least 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        check(self.lr > 0, "lr", self.lr, "must be positive")
        check(self.negatives >= 1, "negatives", self.negatives, "must be at least 1")
        check(self.patience >= 1, "patience", self.patience, "must be at least 1")
        check(self.time_limit_s >= 0, "time_limit_s", self.time_limit_s, "must be 0 (none) or positive")


@dataclass(frozen=True)
class ListLoss:
    """How cooperative training scores a candidate list (device.training.coop): softmax CE over [target + list]."""

    ce_weight: float = 1.0  # weight of the full-catalogue CE added beside the listwise loss
    # True: only positions whose target is in the list count (the serving case: the device re-ranks the list, and
    # its ranking matters only when the target is there). False: the target is inserted into every list.
    listed_only: bool = False


@dataclass(frozen=True)
class ListTraining:
    """Cooperative training from the start on every position (device.training.coop): the candidate list of each training
    target, the loss over them, and the validation that picks the epoch. `train` runs independent training as
    the case without lists."""

    lists: Sequence[np.ndarray] | None  # per training sequence, (len - 1, N): the list of each target seq[1:]
    loss: ListLoss
    validate: Callable[[torch.nn.Module], dict]  # model -> figures, including `metric`
    metric: str = "valid_list_ndcg@10"


def _windows(sequences: Sequence[np.ndarray], length: int, rng: np.random.Generator,
             first_target: Sequence[int] | None = None,
             lists: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """Cut each sequence into (input, next-item target) windows of `length`, left-padded with 0.

    Window ends shift randomly each epoch so every position is sometimes deep inside a window.
    Targets at positions before `first_target[i]` are 0 (not trained on): used for fresh-only loss.
    With `lists` (per sequence, (len - 1, N): the candidate list of each target seq[1:]), a third
    array (W, length, N) holds each window position's list (0 rows where the window is padded).
    """
    inputs, targets, spans = [], [], []
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        x, y = seq[:-1], seq[1:].copy()
        if first_target is not None:
            y[: max(0, first_target[i] - 1)] = 0
        ends = list(range(len(x), 0, -length))
        shift = int(rng.integers(0, length)) if len(x) > length else 0
        ends = sorted({min(len(x), max(1, e - shift)) for e in ends} | {len(x)})
        for end in ends:
            start = max(0, end - length)
            if y[start:end].any():
                inputs.append(x[start:end])
                targets.append(y[start:end])
                spans.append((i, start, end))
    arrays = (pad_left(inputs, length), pad_left(targets, length))
    if lists is None:
        return arrays
    window_lists = np.zeros((len(spans), length, lists[0].shape[1] if lists else 0), dtype=np.int64)
    for w, (i, start, end) in enumerate(spans):
        window_lists[w, length - (end - start):] = lists[i][start:end]
    return arrays + (window_lists,)


def _prefixes(sequences: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (prefix, next item) pair, for models without per-position states (DIN): (E, T), (E,)."""
    histories, targets = [], []
    for seq in sequences:
        for p in range(1, len(seq)):
            histories.append(seq[max(0, p - length):p])
            targets.append(int(seq[p]))
    return pad_left(histories, length), np.asarray(targets, dtype=np.int64)


def _negatives(shape: tuple[int, ...], num_items: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(1, num_items + 1, shape, generator=gen)


def list_cross_entropy(logits: torch.Tensor, target: torch.Tensor, cands: torch.Tensor,
                       listed_only: bool = False) -> torch.Tensor:
    """Softmax CE of `logits` (P, 1 + N) over [target + cands (P, N)], the target first; a candidate equal to
    the target, or padding (0), is masked. The listwise loss of cooperative training. With `listed_only`, the
    mean is over the rows whose target is among `cands` (0 if there is none)."""
    listed = cands == target.unsqueeze(1)
    mask = torch.cat([torch.zeros_like(target, dtype=torch.bool).unsqueeze(1), listed | (cands == 0)], dim=1)
    losses = F.cross_entropy(logits.masked_fill(mask, -1e9), torch.zeros(len(target), dtype=torch.long),
                             reduction="none")
    if not listed_only:
        return losses.mean()
    weights = listed.any(1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


def batch_loss(model, history: torch.Tensor, target: torch.Tensor, config: TrainConfig,
               gen: torch.Generator, lists: torch.Tensor | None = None,
               list_loss: ListLoss = ListLoss()) -> torch.Tensor:
    """Mean loss of a batch. All-position models: target (B, T), 0 = no target; others: target (B,).

    With `lists` ((B, T, N), full CE only): cooperative training at every position, i.e. the listwise loss over
    [target + that position's list] plus `list_loss.ce_weight` x the full-catalogue CE.
    """
    n = model.num_items
    if lists is not None and not (model.all_positions and config.loss == "ce"):
        raise ConfigError("loss", config.loss, "training on candidate lists needs an all-position model and loss = ce")
    if model.all_positions:
        states = model.encode(history)  # (B, T, d)
        mask = target > 0
        offsets = None if model.history_bias is None else model.history_bias.positions(history, n + 1)[mask]
        states, target = states[mask], target[mask]  # (P, d), (P,)
        if config.loss == "ce":
            logits = states @ model.item_vectors(torch.arange(n + 1)).T  # (P, N + 1)
            if offsets is not None:
                logits = logits + offsets
            logits[:, 0] = -1e9
            full = F.cross_entropy(logits, target)
            if lists is None:
                return full
            cands = lists[mask]  # (P, N): the list scores are columns of the catalogue scores
            listwise = list_cross_entropy(logits.gather(1, torch.cat([target.unsqueeze(1), cands], 1)), target, cands,
                                          list_loss.listed_only)
            return listwise + list_loss.ce_weight * full
        negs = _negatives((len(target), config.negatives), n, gen)
        cands = torch.cat([target.unsqueeze(1), negs], dim=1)  # (P, 1 + K)
        logits = dot_scores(model.item_vectors(cands), states)
        if offsets is not None:
            logits = logits + offsets.gather(1, cands)
    else:
        if config.loss == "ce":
            return F.cross_entropy(model.score_all(history), target)
        negs = _negatives((len(target), config.negatives), n, gen)
        cands = torch.cat([target.unsqueeze(1), negs], dim=1)
        logits = model(history, cands)  # (B, 1 + K)
    clash = torch.cat([torch.zeros_like(cands[:, :1], dtype=torch.bool), cands[:, 1:] == target.unsqueeze(1)], 1)
    logits = logits.masked_fill(clash, -1e9)  # a negative that equals the target is no negative
    if config.loss == "sampled_ce":
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    weights = (~clash).float()
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum") / weights[:, 0].sum()


def training_arrays(model, sequences, config: TrainConfig, rng, first_target=None, lists=None):
    """The epoch's (histories, targets[, lists]) arrays for this model kind."""
    if model.all_positions:
        return _windows(sequences, model.max_len, rng, first_target, lists)
    if lists is not None:
        raise ConfigError("model", type(model).__name__, "training on candidate lists needs an all-position model")
    return _prefixes(sequences, model.max_len)


def run_epoch(model, optimizer, arrays, config: TrainConfig, gen: torch.Generator, rng,
              deadline: float | None = None, desc: str = "train", progress: bool = True,
              list_loss: ListLoss = ListLoss()) -> float:
    """One pass over shuffled arrays; returns the mean loss. Stops early at `deadline` (perf_counter)."""
    histories, targets, *lists = arrays
    order = rng.permutation(len(histories))
    model.train()
    total, batches = 0.0, 0
    bar = tqdm(range(0, len(order), config.batch_size), desc=desc, file=sys.stderr, leave=False,
               disable=not progress or len(order) < 20 * config.batch_size)
    for start in bar:
        idx = order[start:start + config.batch_size]
        loss = batch_loss(model, torch.from_numpy(histories[idx]), torch.from_numpy(targets[idx]), config, gen,
                          torch.from_numpy(lists[0][idx]) if lists else None, list_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total, batches = total + float(loss.detach()), batches + 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return total / max(batches, 1)


def validate(model, valid: Examples) -> dict:
    """Validation figures, full ranking with seen items removed (protocol A's rule)."""
    figures = evaluate(model_score_fn(model), valid, model.max_len, ks=(10, 20), rules=("removed",))
    return {f"valid_{k}": v for k, v in figures.items() if k != "users"}


def train(model_name: str, model_config: dict, config: TrainConfig, split: TrainSplit, num_items: int,
          vocab_hash: str, out: str | Path | None = None, protocol: str = "stream",
          progress: bool = True, coop: ListTraining | None = None,
          cold: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a fresh model, keep the weights with the best validation NDCG@10, write `out/srm.pt`.

    `cold` ({"cold_seed", "cold_fraction"}) records protocol C's draw the split was made with (make_checkpoint).

    With `coop`, every position also learns to pick its target out of its candidate list, and the epoch is
    chosen on `coop.validate` (device.training.coop: the validation lists) instead of the full-catalogue NDCG@10.
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = build_model(model_name, {**model_config, "num_items": num_items})
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    deadline = time.perf_counter() + config.time_limit_s if config.time_limit_s else None
    best, best_state, stale, history = -1.0, None, 0, []
    # Independent training is the case without lists, its epoch chosen on the full-catalogue NDCG@10.
    task = coop or ListTraining(None, ListLoss(), lambda m: validate(m, split.valid), "valid_ndcg@10")
    metric = task.metric
    epochs = tqdm(range(1, config.epochs + 1), desc=f"{model_name} epochs", file=sys.stderr, disable=not progress)
    for epoch in epochs:
        arrays = training_arrays(model, split.train, config, rng, lists=task.lists)
        loss = run_epoch(model, optimizer, arrays, config, gen, rng, deadline, f"epoch {epoch}", progress,
                         list_loss=task.loss)
        figures = task.validate(model)
        history.append({"epoch": epoch, "loss": loss, **figures})
        epochs.set_postfix(loss=f"{loss:.3f}", **{metric: f"{figures[metric]:.4f}"}, best=f"{max(best, 0):.4f}")
        if figures[metric] > best:
            best, best_state, stale = figures[metric], copy.deepcopy(model.state_dict()), 0
            best_metrics = {**figures, "epoch": float(epoch)}
        else:
            stale += 1
        if stale >= config.patience or (deadline is not None and time.perf_counter() >= deadline):
            break
    model.load_state_dict(best_state)
    model.eval()
    ckpt = make_checkpoint(model_name, model, config, vocab_hash, best_metrics, protocol, history, cold=cold,
                           untrained=untrained_items(split.train, num_items))
    if out is not None:
        save_checkpoint(ckpt, Path(out) / CHECKPOINT_NAME)
    return model, ckpt


def untrained_items(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """Ascending ids of the items that no sequence holds: the model learned nothing about them."""
    from shared.data.cold import item_counts

    return np.flatnonzero(item_counts(sequences, num_items)[1:] == 0) + 1


def make_checkpoint(model_name, model, config: TrainConfig, vocab_hash: str, metrics: dict, protocol: str,
                    history: list, parent: str | None = None, cold: dict | None = None,
                    untrained: Sequence[int] = ()) -> dict:
    """State dict + model config + training config + vocab hash + validation metrics (+ lineage).

    `cold_seed` and `cold_fraction` name protocol C's cold draw (None: the split had no cold items); checkpoints
    written before they existed lack the keys, and readers use .get. `untrained_items`: the ids no training
    sequence held (untrained_items()), carried into the exported manifest.
    """
    from datetime import datetime, timezone

    return {
        "format": CHECKPOINT_FORMAT,
        "model": model_name,
        "model_config": to_dict(model.config),
        "train_config": to_dict(config),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "vocab_hash": vocab_hash,
        "num_items": model.num_items,
        "protocol": protocol,
        "cold_seed": None if cold is None else int(cold["cold_seed"]),
        "cold_fraction": None if cold is None else float(cold["cold_fraction"]),
        "untrained_items": [int(i) for i in untrained],
        "metrics": {k: float(v) for k, v in metrics.items()},
        "history": history,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "parent": parent,
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Atomic write (temp file, then rename); the checkpoint's version is set from its bytes' sha256."""
    from shared.manifest import new_version, sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({**ckpt, "version": ""}, tmp)
        ckpt["version"] = new_version(sha256_file(tmp))
        torch.save(ckpt, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, vocab_hash: str | None = None):
    """(model in eval mode, checkpoint dict); refuses another catalogue with CatalogMismatchError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("ckpt", str(path), "no such checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("ckpt", str(path), f"not an SRM checkpoint ({CHECKPOINT_FORMAT})")
    if vocab_hash is not None and ckpt["vocab_hash"] != vocab_hash:
        raise CatalogMismatchError(str(path), vocab_hash, ckpt["vocab_hash"])
    model = build_model(ckpt["model"], ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def train_config_from(ckpt: dict, **changes) -> TrainConfig:
    return replace(from_dict(TrainConfig, ckpt["train_config"]), **changes)
