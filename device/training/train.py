"""SRM training: one loop (`fit`) for the three ways an SRM learns, and the losses and data it learns from.

Independent training (`train`: full-softmax cross-entropy by default, or sampled losses), cooperative training
on a generator's candidate lists (device.training.coop) and fine-tuning on fresh events
(device.training.finetune) are configurations of `fit`: they differ in their data (`Epoch`s), their loss, and
whether a validation picks the epoch that is kept (`Selection`).
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from device.training.artifacts import CHECKPOINT_NAME, make_checkpoint, save_checkpoint
from device.training.evaluate import evaluate, model_score_fn
from device.training.models import build_model
from device.training.models.common import dot_scores
from shared.config import check, from_dict
from shared.data.cold import item_counts
from shared.data.splits import Examples, TrainSplit
from shared.errors import ConfigError
from shared.sequences import pad_left


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
    grad_clip: float = 5.0  # max gradient norm of every step (clip_grad_norm_); cooperative training uses it too

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
    """The epoch's (histories, targets[, lists]) arrays for this model kind: windows for all-position models
    (each position's next item), every (prefix, next item) pair for the others."""
    if model.all_positions:
        return _windows(sequences, model.max_len, rng, first_target, lists)
    if lists is not None:
        raise ConfigError("model", type(model).__name__, "training on candidate lists needs an all-position model")
    return _prefixes(sequences, model.max_len)


# ---- the loop

LossFn = Callable[..., torch.Tensor]  # (model, one batch of every Epoch array as a tensor, ...) -> scalar loss


@dataclass(frozen=True)
class Epoch:
    """One pass over the training data: row i of every array is example i; `batches` holds the row indices of
    each optimiser step, in order."""

    arrays: tuple[np.ndarray, ...]
    batches: list[np.ndarray]


def fixed_batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled order of n rows cut into batches of `size` (the last one smaller)."""
    order = rng.permutation(n)
    return [order[start:start + size] for start in range(0, n, size)]


def even_batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled order of n rows cut into max(1, n // size) batches of near-equal size, none smaller than `size`
    when n >= size (cooperative fine-tuning's batching: no small last batch)."""
    return np.array_split(rng.permutation(n), max(1, n // size))


def window_loss(config: TrainConfig, gen: torch.Generator, list_loss: ListLoss = ListLoss()) -> LossFn:
    """`batch_loss` over a batch of `training_epoch` arrays (histories, targets[, lists])."""
    def loss(model, history: torch.Tensor, target: torch.Tensor, lists: torch.Tensor | None = None) -> torch.Tensor:
        return batch_loss(model, history, target, config, gen, lists, list_loss)
    return loss


def training_epoch(model, sequences, config: TrainConfig, rng, first_target=None, lists=None) -> Epoch:
    """The next pass over `sequences`: fresh windows (training_arrays) in shuffled batches of config.batch_size."""
    arrays = training_arrays(model, sequences, config, rng, first_target, lists)
    return Epoch(arrays, fixed_batches(len(arrays[0]), config.batch_size, rng))


@dataclass(frozen=True)
class Selection:
    """Early stopping on a validation: after every epoch `validate(model)` gives figures; the weights of the
    epoch with the highest `metric` are kept, and TrainConfig.patience epochs without a better one end training."""

    validate: Callable[[nn.Module], dict]
    metric: str
    # True: the starting weights are validated and compete too, so fine-tuning never returns a worse model.
    start_competes: bool = False


@dataclass(frozen=True)
class Fit:
    """What `fit` did."""

    history: list[dict]  # one record per validation: {"epoch", "loss" (not for epoch 0), **figures}
    epochs: int  # passes that ran
    loss: float  # mean loss of the last pass (nan when none ran)
    epoch: int = 0  # the kept epoch (0 = the starting weights); the last one without a Selection
    figures: dict = field(default_factory=dict)  # the kept epoch's validation figures ({} without a Selection)


def seed_everything(seed: int, threads: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch (weight init, dropout), set its threads, and return the numpy rng (windows, batch order) and the
    torch generator (sampled negatives) a run draws from, so that one seed gives one result."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def run_epoch(model, optimizer, epoch: Epoch, loss_fn: LossFn, grad_clip: float, deadline: float | None = None,
              desc: str = "train", progress: bool = True) -> float:
    """One pass: a gradient-clipped optimiser step per batch; returns the mean loss. Stops early at `deadline`
    (time.perf_counter)."""
    model.train()
    total, steps = 0.0, 0
    bar = tqdm(epoch.batches, desc=desc, file=sys.stderr, leave=False,
               disable=not progress or len(epoch.batches) < 20)
    for idx in bar:
        loss = loss_fn(model, *(torch.from_numpy(array[idx]) for array in epoch.arrays))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total, steps = total + float(loss.detach()), steps + 1
        bar.set_postfix(loss=f"{total / steps:.4f}")
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return total / max(steps, 1)


def fit(model, optimizer, next_epoch: Callable[[], Epoch | None], loss_fn: LossFn, config: TrainConfig,
        epochs: int | None, select: Selection | None = None, desc: str = "train", progress: bool = True) -> Fit:
    """Train `model` in place, pass after pass, and leave it in eval mode.

    Stops after `epochs` passes (None: no cap), when `next_epoch()` returns None (nothing to learn), once
    `config.time_limit_s` is spent (the pass under way ends there too) or, with `select`, after
    `config.patience` epochs without a better figure; the model then holds the kept epoch's weights. Every step
    clips the gradient norm at `config.grad_clip`.
    """
    deadline = time.perf_counter() + config.time_limit_s if config.time_limit_s else None
    keeper = None if select is None else _Keeper(select.metric)
    history, ran, loss = [], 0, math.nan
    if select is not None and select.start_competes:
        figures = select.validate(model)
        history.append({"epoch": 0, **figures})
        keeper.offer(model, 0, figures)
    bar = tqdm(itertools.count(1) if epochs is None else range(1, epochs + 1), total=epochs, desc=f"{desc} epochs",
               file=sys.stderr, disable=not progress)
    for epoch in bar:
        data = next_epoch()
        if data is None:
            break
        loss = run_epoch(model, optimizer, data, loss_fn, config.grad_clip, deadline, f"epoch {epoch}", progress)
        ran = epoch
        if keeper is not None:
            figures = select.validate(model)
            history.append({"epoch": epoch, "loss": loss, **figures})
            keeper.offer(model, epoch, figures)
            bar.set_postfix(loss=f"{loss:.3f}", **{select.metric: f"{figures[select.metric]:.4f}"},
                            best=f"{keeper.best:.4f}")
            if keeper.stale >= config.patience:
                break
        if deadline is not None and time.perf_counter() >= deadline:
            break
    if keeper is None:
        model.eval()
        return Fit(history, ran, loss, ran)
    model.load_state_dict(keeper.state)
    model.eval()
    return Fit(history, ran, loss, keeper.epoch, keeper.figures)


class _Keeper:
    """The best weights offered so far by one figure, and how many offers ago they came."""

    def __init__(self, metric: str):
        self.metric, self.best, self.stale = metric, -math.inf, 0
        self.state, self.figures, self.epoch = None, {}, 0

    def offer(self, model, epoch: int, figures: dict) -> None:
        if figures[self.metric] > self.best:
            self.best, self.stale, self.figures, self.epoch = figures[self.metric], 0, figures, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy, not the live weights
        else:
            self.stale += 1


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
    rng, gen = seed_everything(config.seed, config.threads)
    model = build_model(model_name, {**model_config, "num_items": num_items})
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Independent training is the case without lists, its epoch chosen on the full-catalogue NDCG@10.
    task = coop or ListTraining(None, ListLoss(), lambda m: validate(m, split.valid), "valid_ndcg@10")
    result = fit(model, optimizer, lambda: training_epoch(model, split.train, config, rng, lists=task.lists),
                 window_loss(config, gen, task.loss), config, config.epochs, Selection(task.validate, task.metric),
                 model_name, progress)
    ckpt = make_checkpoint(model_name, model, config, vocab_hash, {**result.figures, "epoch": float(result.epoch)},
                           protocol, result.history, cold=cold, untrained=untrained_items(split.train, num_items))
    if out is not None:
        save_checkpoint(ckpt, Path(out) / CHECKPOINT_NAME)
    return model, ckpt


def untrained_items(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """Ascending ids of the items that no sequence holds: the model learned nothing about them."""
    return np.flatnonzero(item_counts(sequences, num_items)[1:] == 0) + 1


def train_config_from(ckpt: dict, **changes) -> TrainConfig:
    """The checkpoint's training config with `changes` (the starting recipe of fine-tuning and coop training)."""
    return replace(from_dict(TrainConfig, ckpt["train_config"]), **changes)
