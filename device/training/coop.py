"""Cooperative training (LSC4Rec strategy 1): fine-tune the SRM to pick the true next item out of
[target + a frozen generator's candidate list], the exact re-ranking task it does at serving time.

Candidate lists are the expensive part (an LLM call per history), so they are cached on disk, keyed by
the generator's version, the list length and the histories themselves.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from device.training.models import build_model
from device.training.models.common import dot_scores
from device.training.train import (ListLoss, ListTraining, TrainConfig, list_cross_entropy, load_checkpoint, make_checkpoint,
                          save_checkpoint, train, train_config_from, untrained_items)
from shared.config import check
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


def list_order_ranks(targets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The generator's own order (baseline 'LLM only')."""
    hit = lists == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1)


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
    from shared.config import to_dict

    ckpt.update(parent=parent, coop_config=to_dict(config), generator_version=generator.version)
    if out is not None:
        save_checkpoint(ckpt, Path(out) / "srm.pt")
    return ckpt


def coop_train(model, model_name: str, split: TrainSplit, generator, config: CoopConfig, vocab_hash: str,
               cache_dir: str | Path | None, out: str | Path | None = None, parent: str | None = None,
               progress: bool = True):
    """Fine-tune `model` in place with the listwise loss (+ ce_weight x full CE); early stopping on the
    validation NDCG@10 over the lists. Returns (model, checkpoint dict)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    train_ex = training_examples(split, config.histories_per_user)
    train_lists = candidate_lists(generator, train_ex.histories, config.num_candidates, config.lag, cache_dir,
                                  config.generate_batch)
    valid_lists = _valid_lists(generator, split, config, cache_dir)
    hist = pad_left(train_ex.histories, model.max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ce_config = TrainConfig(loss="ce")

    def score() -> dict:
        return list_figures(model, split.valid, valid_lists)

    best_fig = score()
    # The starting weights compete too: if no epoch beats them, the result is the model we started from.
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best, stale, history = best_fig["valid_list_ndcg@10"], 0, [{"epoch": 0, **best_fig}]
    bar = tqdm(range(1, config.epochs + 1), desc="coop epochs", file=sys.stderr, disable=not progress)
    for epoch in bar:
        model.train()
        for idx in np.array_split(rng.permutation(len(hist)), max(1, len(hist) // config.batch_size)):
            h = torch.from_numpy(hist[idx])
            t = torch.from_numpy(train_ex.targets[idx])
            loss = listwise_loss(model, h, t, torch.from_numpy(train_lists[idx]), config.ce_weight,
                                 config.listed_only)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        fig = score()
        history.append({"epoch": epoch, **fig})
        bar.set_postfix(list_ndcg10=f"{fig['valid_list_ndcg@10']:.4f}", best=f"{best:.4f}")
        if fig["valid_list_ndcg@10"] > best:
            best, best_fig, stale = fig["valid_list_ndcg@10"], fig, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    ckpt = make_checkpoint(model_name, model, ce_config, vocab_hash, {**best_fig}, "stream", history,
                           untrained=untrained_items(split.train, model.num_items))
    return model, _finish(ckpt, config, generator, out, parent)


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


def make_generator(spec: str, dataset, split: TrainSplit | None = None):
    """'popularity' (counts over the training prefixes) or 'llm:FOLDER' (registered by the `lsc4rec` root)."""
    from shared.generator import generator_from_spec

    return generator_from_spec(spec, dataset, split.train if split is not None else None)


def _coop_config(args) -> CoopConfig:
    from device.training import PRESETS
    from shared.config import load_config, resolve_preset

    path = resolve_preset(PRESETS, args.coop_config or "coop", "--coop-config")
    overrides = [o[len("coop."):] for o in args.overrides if o.startswith("coop.")]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(CoopConfig, path, overrides, section="coop")


def coop_main(args, dataset) -> int:
    """`train srm --coop`: start from --resume (or train independently first), fine-tune on the lists (or, with
    `from_scratch`, train the same architecture from fresh weights on them), and report both models on
    protocol B re-ranking of the generator's session-start lists."""
    import copy

    from shared.cli import emit
    from shared.data.splits import stream_split

    stream = stream_split(dataset)
    split = stream.srm_train()
    config = _coop_config(args)
    if args.resume is not None:
        base, parent = load_checkpoint(args.resume, dataset.vocab_hash)
    else:
        from device.training.train import train
        from device.training.cli import _load_configs

        args.overrides = [o for o in args.overrides if not o.startswith("coop.")]
        model_dict, train_cfg = _load_configs(args, args.model)
        base, parent = train(args.model, model_dict, train_cfg, split, dataset.num_items, dataset.vocab_hash,
                             out=Path(args.out) / "independent")
    generator = make_generator(args.generator, dataset, stream.cloud_train())
    cache = Path(args.out) / "candidate-cache"
    lists = protocol_b_lists(stream, generator, config.num_candidates, cache)
    before = protocol_b_rerank(base, stream, lists)
    if config.from_scratch and base.all_positions:  # from the start, every position of every sequence at once
        model, ckpt = coop_from_scratch(parent["model"], parent, split, generator, config, dataset.vocab_hash,
                                        cache, out=args.out)
    else:
        start = copy.deepcopy(base)
        if config.from_scratch:  # DIN: same architecture, fresh weights, one list per sampled history
            torch.manual_seed(config.seed)
            start = build_model(parent["model"], parent["model_config"])
        model, ckpt = coop_train(start, parent["model"], split, generator, config, dataset.vocab_hash,
                                 cache, out=args.out, parent=parent.get("version"))
    after = protocol_b_rerank(model, stream, lists)
    figures = {"protocol": "B (session-start list, re-ranked at every stream step, no requests)",
               "generator": generator.version, "users": len(stream), "seed": config.seed,
               "checkpoint": str(Path(args.out) / "srm.pt"), "version": ckpt["version"]}
    figures.update({f"independent/{k}": v for k, v in before.items()})
    figures.update({f"coop/{k}": v for k, v in after.items() if k.startswith("srm/")})
    emit(figures, args.json, "cooperative training (NDCG/HR/MRR over the candidate list)")
    return 0


def rerank_main(args, dataset) -> int:
    """`eval srm --rerank GEN --ckpt CKPT`: protocol B re-ranking of the generator's lists."""
    from shared.cli import emit
    from shared.data.splits import stream_split
    from shared.errors import ConfigError

    if args.ckpt is None:
        raise ConfigError("--rerank", args.rerank, "needs --ckpt (artifacts are re-ranked by the device runtime)")
    stream = stream_split(dataset)
    model, ckpt = load_checkpoint(args.ckpt, dataset.vocab_hash)
    generator = make_generator(args.rerank, dataset, stream.cloud_train())
    cache = Path(args.ckpt if Path(args.ckpt).is_dir() else Path(args.ckpt).parent) / "candidate-cache"
    lists = protocol_b_lists(stream, generator, CoopConfig().num_candidates, cache)
    figures = {"protocol": "B (session-start list, re-ranked at every stream step, no requests)",
               "generator": generator.version, "users": len(stream), "model": ckpt["model"],
               "version": ckpt["version"], **protocol_b_rerank(model, stream, lists)}
    emit(figures, args.json, "SRM re-ranking of candidate lists")
    return 0
