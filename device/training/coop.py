"""Cooperative training (LSC4Rec strategy 1): fine-tune the SRM to pick the true next item out of
[target + a frozen generator's candidate list], the exact re-ranking task it does at serving time.

Candidate lists are the expensive part (an LLM call per history), so they are cached on disk, keyed by
the generator's version, the list length and the histories themselves.
"""
from __future__ import annotations

import copy
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from device.training.artifacts import CHECKPOINT_NAME, make_checkpoint, save_checkpoint
from device.training.models import build_model
from device.training.models.common import dot_scores
from device.training.train import (Epoch, ListLoss, ListTraining, Selection, TrainConfig, even_batches, fit,
                                   list_cross_entropy, seed_everything, train, train_config_from, untrained_items)
from shared.config import check, to_dict
from shared.data.splits import Examples, StreamSplit, TrainSplit
from shared.metrics import summarize
from shared.sequences import pad_left

RERANK_KS = (1, 5, 10, 20)


@dataclass(frozen=True)
class CoopConfig:
    num_candidates: int = 50  # N, as served
    histories_per_user: int = 8  # most recent training prefixes per user that get a list
    lag: int = 3  # the list comes from the history minus its last `lag` items (the cloud lags)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    ce_weight: float = 0.5  # weight of the full-catalogue CE kept beside the listwise loss
    listed_only: bool = False  # the listwise loss only where the target is in the list (device.training.train.ListLoss)
    from_scratch: bool = False  # True: train the base's architecture from fresh weights, not fine-tune the base
    patience: int = 3
    seed: int = 0
    threads: int = 1
    generate_batch: int = 64

    def __post_init__(self):
        check(self.num_candidates >= 2, "num_candidates", self.num_candidates, "must be at least 2")
        check(self.histories_per_user >= 1, "histories_per_user", self.histories_per_user, "must be at least 1")
        check(self.lag >= 0, "lag", self.lag, "must be 0 or more")
        check(0.0 <= self.ce_weight, "ce_weight", self.ce_weight, "must be 0 or more")


def training_examples(split: TrainSplit, per_user: int) -> Examples:
    """(prefix, next item) pairs from the most recent `per_user` positions of each training sequence."""
    users, histories, targets = [], [], []
    for user, seq in zip(split.users, split.train):
        for p in range(max(1, len(seq) - per_user), len(seq)):
            users.append(int(user))
            histories.append(seq[:p])
            targets.append(int(seq[p]))
    return Examples(np.asarray(users, dtype=np.int64), tuple(histories), np.asarray(targets, dtype=np.int64))


def candidate_lists(generator, histories, n: int, lag: int, cache_dir: str | Path | None,
                    batch: int = 64, excludes=None) -> np.ndarray:
    """(E, n) int64 lists: generated from each history minus its last `lag` items; excludes the whole
    history (the device drops consumed items). Cached as .npy under `cache_dir`."""
    seen = [np.asarray(h, dtype=np.int64) for h in histories]
    asked = [h[: len(h) - lag] if lag else h for h in seen]
    blocked = [s if excludes is None else np.concatenate([s, np.asarray(e, np.int64)]) for s, e in
               zip(seen, excludes or seen)]
    key = hashlib.sha256(f"{generator.version}|{n}|{lag}".encode())
    for a, b in zip(asked, blocked):
        key.update(a.tobytes() + b"|" + b.tobytes() + b";")
    path = Path(cache_dir) / f"candidates-{key.hexdigest()[:20]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    out = np.zeros((len(seen), n), dtype=np.int64)
    for start in tqdm(range(0, len(seen), batch), desc=f"candidates ({generator.version})", file=sys.stderr,
                      disable=len(seen) <= batch):
        rows = range(start, min(start + batch, len(seen)))
        lists = generator.generate([asked[r].tolist() for r in rows], n,
                                   excludes=[np.setdiff1d(blocked[r], asked[r]).tolist() for r in rows])
        for r, cands in zip(rows, lists):
            out[r, : len(cands)] = [c.item for c in cands]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out


def listwise_loss(model, history: torch.Tensor, target: torch.Tensor, cands: torch.Tensor,
                  ce_weight: float = 0.0, listed_only: bool = False) -> torch.Tensor:
    """Softmax CE over [target + candidates] (a candidate equal to the target, or padding, is masked),
    plus `ce_weight` x the full-catalogue CE so the model keeps ranking items outside the lists."""
    items = torch.cat([target.unsqueeze(1), cands], dim=1)  # (B, 1 + N)
    if model.all_positions:
        user = model.encode(history)[:, -1, :]  # (B, d), shared by both terms
        logits = model.with_history_bias(dot_scores(model.item_vectors(items), user), history, items)
    else:
        user, logits = None, model(history, items)
    loss = list_cross_entropy(logits, target, cands, listed_only)
    if ce_weight:
        full = (model.with_history_bias(user @ model.item_vectors(torch.arange(model.num_items + 1)).T, history)
                if user is not None else model.score_all(history))
        full[:, 0] = -1e9
        loss = loss + ce_weight * F.cross_entropy(full, target)
    return loss


def rerank_ranks(model, histories, targets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """0-based rank of each target inside its list after re-ranking by the model; -1 if not in the list."""
    ranks = np.full(len(targets), -1, dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(targets), 256):
            sl = slice(start, start + 256)
            h = torch.from_numpy(pad_left(histories[sl], model.max_len))
            c = torch.from_numpy(np.ascontiguousarray(lists[sl]))
            scores = model(h, c).numpy().astype(np.float64)
            scores[lists[sl] == 0] = -np.inf
            for b, t in enumerate(targets[sl]):
                hit = np.flatnonzero(lists[start + b] == t)
                if hit.size:
                    ranks[start + b] = int((scores[b] >= scores[b, hit[0]]).sum() - 1)
    return ranks


def list_figures(model, valid: Examples, valid_lists: np.ndarray) -> dict:
    """Validation NDCG@10 over the candidate lists: what cooperative training selects its epoch on."""
    ranks = rerank_ranks(model, valid.histories, valid.targets, valid_lists)
    return {f"valid_list_{k}": v for k, v in summarize(ranks, (10,)).items()}


def _valid_lists(generator, split: TrainSplit, config: CoopConfig, cache_dir: str | Path | None) -> np.ndarray:
    """The generator's lists for the validation histories, on which both cooperative paths choose their epoch."""
    return candidate_lists(generator, split.valid.histories, config.num_candidates, config.lag, cache_dir,
                           config.generate_batch)


def coop_from_scratch(model_name: str, parent: dict, split: TrainSplit, generator, config: CoopConfig,
                      vocab_hash: str, cache_dir: str | Path | None, out: str | Path | None = None,
                      progress: bool = True):
    """Cooperative training from the start for all-position models (SASRec, GRU4Rec): the base's recipe
    (`parent`'s train config, with the coop learning rate, epochs, patience and batch size) plus the listwise
    loss at every position of every training sequence, each against its own list; the epoch is chosen on the
    validation lists. One encode serves all positions of a window, so an epoch costs about what an
    independent epoch does (the one-list-per-sample path of `coop_train` took ~95 s per epoch on ML-100K).
    Every position gets a list, whatever `histories_per_user` says. Returns (model, checkpoint dict)."""
    every = training_examples(split, max(len(seq) for seq in split.train))
    lists = candidate_lists(generator, every.histories, config.num_candidates, config.lag, cache_dir,
                            config.generate_batch)
    ends = np.cumsum([max(0, len(seq) - 1) for seq in split.train])
    per_sequence = np.split(lists, ends[:-1])  # (len - 1, N) each: the lists of targets seq[1:]
    valid_lists = _valid_lists(generator, split, config, cache_dir)
    train_config = train_config_from(parent, seed=config.seed, lr=config.lr, epochs=config.epochs,
                                     patience=config.patience, batch_size=config.batch_size, threads=config.threads)
    task = ListTraining(per_sequence, ListLoss(config.ce_weight, config.listed_only),
                        lambda m: list_figures(m, split.valid, valid_lists))
    model, ckpt = train(model_name, parent["model_config"], train_config, split, parent["num_items"], vocab_hash,
                        progress=progress, coop=task)
    return model, _finish(ckpt, config, generator, out, parent.get("version"))


def _finish(ckpt: dict, config: CoopConfig, generator, out: str | Path | None, parent: str | None) -> dict:
    """The cooperative checkpoint's lineage (parent, generator, coop config), written to `out/srm.pt`."""
    ckpt.update(parent=parent, coop_config=to_dict(config), generator_version=generator.version)
    if out is not None:
        save_checkpoint(ckpt, Path(out) / CHECKPOINT_NAME)
    return ckpt


# What a cooperative fine-tuning checkpoint records as its training config: full CE with the defaults, which a
# later fine-tuning on fresh events starts from (train_config_from); the cooperative settings are its coop_config.
RECORDED_TRAIN_CONFIG = TrainConfig(loss="ce")


def coop_train(model, model_name: str, split: TrainSplit, generator, config: CoopConfig, vocab_hash: str,
               cache_dir: str | Path | None, out: str | Path | None = None, parent: str | None = None,
               progress: bool = True):
    """Fine-tune `model` in place with the listwise loss (+ ce_weight x full CE) on one list per training history
    (the `histories_per_user` most recent of each user); early stopping on the validation NDCG@10 over the lists,
    the starting weights competing. Works for every model (DIN too). Returns (model, checkpoint dict)."""
    rng, _ = seed_everything(config.seed, config.threads)
    train_ex = training_examples(split, config.histories_per_user)
    train_lists = candidate_lists(generator, train_ex.histories, config.num_candidates, config.lag, cache_dir,
                                  config.generate_batch)
    valid_lists = _valid_lists(generator, split, config, cache_dir)
    arrays = (pad_left(train_ex.histories, model.max_len), train_ex.targets, train_lists)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loop = TrainConfig(loss="ce", epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                       patience=config.patience, seed=config.seed, threads=config.threads)  # grad_clip: the default

    def loss(model, history: torch.Tensor, target: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        return listwise_loss(model, history, target, cands, config.ce_weight, config.listed_only)

    select = Selection(lambda m: list_figures(m, split.valid, valid_lists), "valid_list_ndcg@10", start_competes=True)
    result = fit(model, optimizer, lambda: Epoch(arrays, even_batches(len(train_ex), config.batch_size, rng)), loss,
                 loop, config.epochs, select, "coop", progress)
    ckpt = make_checkpoint(model_name, model, RECORDED_TRAIN_CONFIG, vocab_hash, result.figures, "stream",
                           result.history, untrained=untrained_items(split.train, model.num_items))
    return model, _finish(ckpt, config, generator, out, parent)


def train_cooperatively(base, parent: dict, split: TrainSplit, generator, config: CoopConfig, vocab_hash: str,
                        cache_dir: str | Path | None, out: str | Path | None = None):
    """Cooperative training as `train srm --coop` runs it, from `base` (loaded from its checkpoint `parent`).

    With `from_scratch`, all-position models train from the start on every position (coop_from_scratch); DIN,
    which has no per-position states, takes fresh seeded weights of its architecture into coop_train. Otherwise
    a copy of `base` is fine-tuned (coop_train). Returns (model, checkpoint dict)."""
    if config.from_scratch and base.all_positions:
        return coop_from_scratch(parent["model"], parent, split, generator, config, vocab_hash, cache_dir, out=out)
    if config.from_scratch:
        torch.manual_seed(config.seed)
        start = build_model(parent["model"], parent["model_config"])
    else:
        start = copy.deepcopy(base)
    return coop_train(start, parent["model"], split, generator, config, vocab_hash, cache_dir, out=out,
                      parent=parent.get("version"))


def protocol_b_lists(stream: StreamSplit, generator, n: int, cache_dir) -> np.ndarray:
    """Each user's session-start list: generated from what the cloud has seen (past minus cloud_lag)."""
    return candidate_lists(generator, stream.past, n, stream.cloud_lag, cache_dir)


def protocol_b_rerank(model, stream: StreamSplit, lists: np.ndarray) -> dict:
    """Re-rank the session-start list at every stream step (no fresh requests), consumed items dropped.

    NDCG/HR/MRR @K are over the list (a target outside it is a miss), averaged over users x steps.
    """
    histories, targets, step_lists = [], [], []
    for past, items, base in zip(stream.past, stream.streams, lists):
        for t in range(len(items)):
            seen = np.concatenate([past, items[:t]])
            histories.append(seen)
            targets.append(int(items[t]))
            step_lists.append(np.where(np.isin(base, items[:t]), 0, base))
    targets = np.asarray(targets, dtype=np.int64)
    step_lists = np.stack(step_lists)
    srm = rerank_ranks(model, histories, targets, step_lists)
    # The generator's order with consumed items dropped: rank = live items before the target.
    live = step_lists != 0
    hit = step_lists == targets[:, None]
    base_rank = np.where(hit.any(1), (np.cumsum(live, 1) - 1)[np.arange(len(targets)), hit.argmax(1)], -1)
    figures = {"steps": len(targets), "list_recall": float((srm >= 0).mean())}
    figures.update({f"srm/{k}": v for k, v in summarize(srm, RERANK_KS).items() if not k.startswith("recall")})
    figures.update({f"list/{k}": v for k, v in summarize(base_rank, RERANK_KS).items() if not k.startswith("recall")})
    return figures
