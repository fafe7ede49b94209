"""Train the cloud LM on a protocol's cloud split: next-item generation over sliding windows of history."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tqdm import tqdm

from cloud.llm.evaluate import evaluate_examples
from cloud.llm.generate import LLMGenerator
from cloud.llm.model import ModelConfig, build_model, count_parameters
from cloud.llm.semantic_ids import BOS, NUM_SPECIAL, PAD, ItemIndex, TokenizerConfig, build_index
from cloud.llm.store import cold_bias, save_run
from shared.config import apply_overrides, check, from_dict, read_toml, resolve_preset
from shared.data.cold import loo_cold_split, stream_cold_split
from shared.data.dataset import Dataset
from shared.data.splits import Examples, TrainSplit, loo_split, stream_split
from shared.errors import ConfigError

PROTOCOLS = ("stream", "loo", "cold", "cold-stream")

PRESET_DIR = Path(__file__).resolve().parent / "presets"  # NAME.toml per preset, shipped as package data


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of one training run."""

    # stream: protocol B's cloud split (default); loo: protocol A's training split; cold / cold-stream: the same
    # with a seeded share of the items (cold_fraction, drawn with cold_seed) removed from every training sequence
    protocol: str = "stream"
    cold_fraction: float = 0.1
    cold_seed: int = 0
    stream_length: int = 10
    cloud_lag: int = 3
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    block_lr: float = 0.0  # learning rate of the transformer blocks (0 = lr); lower keeps pretrained blocks close
    freeze_blocks: bool = False  # text-grounded models: train only the item table, the (pretrained) blocks stay fixed
    weight_decay: float = 0.01
    embedding_dropout: float = 0.2
    window_stride: int = 0  # items between window ends; 0 = max_history (non-overlapping windows)
    patience: int = 6  # epochs without a better validation NDCG@10 before stopping
    valid_users: int = 0  # 0 = all validation users
    grad_clip: float = 1.0
    # text-grounded models: items with no training interaction are left out of the softmax (never pushed down as
    # negatives). Measured: dropping a share of the residuals in training instead (DropoutNet-style, 0.3 / 0.6)
    # cost warm NDCG@10 0.026 / 0.040 on the validation world for a cold recall@50 of only 0.067 / 0.057.
    mask_untrained: bool = True
    threads: int = 1  # 1 is faster than 2 when the 2 cores are shared
    max_minutes: float = 0.0  # stop after the epoch that passes this wall time (0 = no limit); best epoch kept
    seed: int = 0

    def __post_init__(self):
        check(self.protocol in PROTOCOLS, "train.protocol", self.protocol, f"must be one of {', '.join(PROTOCOLS)}")
        check(0.0 <= self.cold_fraction < 1.0, "train.cold_fraction", self.cold_fraction, "must be in [0, 1)")
        check(self.epochs >= 1, "train.epochs", self.epochs, "must be at least 1")
        check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be at least 1")
        check(self.lr > 0, "train.lr", self.lr, "must be positive")
        check(0.0 <= self.embedding_dropout < 1.0, "train.embedding_dropout", self.embedding_dropout, "must be in [0, 1)")
        check(self.window_stride >= 0, "train.window_stride", self.window_stride, "must be 0 or more")
        check(self.patience >= 1, "train.patience", self.patience, "must be at least 1")
        check(self.threads >= 1, "train.threads", self.threads, "must be at least 1")


@dataclass(frozen=True)
class LLMConfig:
    """Everything that makes one cloud LM: tokenizer, architecture, training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_llm_config(preset: str | None = None, path: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> LLMConfig:
    """Code defaults < the preset file (cloud/llm/presets/NAME.toml: `preset`, else the --config file's
    model.preset, else compact) < the TOML file at `path` < `key=value` overrides. A given `preset` names the
    model preset over the file's."""
    given = read_toml(path) if path is not None else {}
    name = preset or given.get("model", {}).get("preset", "compact")
    values = read_toml(resolve_preset(PRESET_DIR, name, "preset"))
    family = values.get("model", {}).get("preset", "compact")  # e.g. compact-semantic.toml builds a compact model
    for section, table in given.items():
        values[section] = {**values.get(section, {}), **table} if isinstance(table, dict) else table
    if preset:
        values.setdefault("model", {})["preset"] = family
    apply_overrides(values, list(overrides))
    return from_dict(LLMConfig, values)


def cloud_split(dataset: Dataset, config: TrainConfig) -> TrainSplit:
    """The split the cloud may learn from: protocol B's cloud_train() (never a stream item) or protocol A's,
    and for protocol C the same without any interaction of the cold items."""
    if config.protocol == "loo":
        return loo_split(dataset)
    if config.protocol == "cold":
        return loo_cold_split(dataset, config.cold_fraction, config.cold_seed)[0]
    if config.protocol == "cold-stream":
        return stream_cold_split(dataset, config.stream_length, config.cloud_lag, config.cold_fraction,
                                 config.cold_seed).cloud_train()
    return stream_split(dataset, config.stream_length, config.cloud_lag).cloud_train()


def windows(sequences: Sequence[np.ndarray], max_history: int, stride: int) -> list[np.ndarray]:
    """Item windows of up to max_history + 1 items, taken from each sequence's end backwards."""
    out = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            out.append(np.asarray(seq[max(0, end - max_history - 1):end], dtype=np.int64))
            if end - max_history - 1 <= 0:
                break
            end -= stride
    return out


def batch_tensors(batch: Sequence[np.ndarray], index: ItemIndex):
    """Right-padded inputs (B, T), targets (B, T) with -100 on padding, and each target's code level (B, T)."""
    import torch

    rows = [np.concatenate([[BOS], index.tokens(w)]) for w in batch]
    width = max(len(r) for r in rows) - 1
    inputs = np.full((len(rows), width), PAD, dtype=np.int64)
    targets = np.full((len(rows), width), -100, dtype=np.int64)
    for b, r in enumerate(rows):
        inputs[b, : len(r) - 1] = r[:-1]
        targets[b, : len(r) - 1] = r[1:]
    levels = np.arange(width) % index.depth
    return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(np.broadcast_to(levels, inputs.shape).copy())


def level_bias(index: ItemIndex):
    """(D, V) additive mask: a target at code level l is only compared with level l's tokens."""
    import torch

    bias = torch.full((index.depth, index.vocab_size), float("-inf"))
    for level, (off, size) in enumerate(zip(index.offsets, index.sizes)):
        bias[level, off:off + size] = 0.0
    return bias


def batch_loss(model, inputs, targets, levels, bias, dropout: float, grounding=None, mask_untrained: bool = False):
    """Mean cross-entropy of every item token given everything before it (restricted to its level).

    With a TextGrounding the token table comes from it, for the inputs and for the output scores alike.
    """
    import torch

    mask = (inputs != PAD) | (torch.arange(inputs.shape[1]) == 0)  # BOS is token 1, position 0 always real
    table = None if grounding is None else grounding()  # (V, H)
    embeds = model.get_input_embeddings()(inputs) if table is None else torch.nn.functional.embedding(inputs, table)
    embeds = torch.nn.functional.dropout(embeds, dropout, model.training)
    if table is None:
        logits = model(inputs_embeds=embeds, attention_mask=mask.long()).logits  # (B, T, V)
    else:
        hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        logits = hidden @ table.T
        if mask_untrained:
            logits = logits + grounding.untrained_bias()
    logits = logits.float()
    if bias.shape[0] > 1:  # atomic codes have one level: only the 3 specials would be masked, skip the (B, T, V) add
        logits = logits + bias[levels]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)


def make_grounding(model, config: LLMConfig, index: ItemIndex, split: TrainSplit, item_vectors: np.ndarray | None):
    """The TextGrounding of a text-grounded model (None for id tokens); refuses what it cannot ground."""
    from cloud.llm.grounding import TextGrounding, trained_items  # torch

    if config.model.grounding != "text":
        return None
    if item_vectors is None:
        raise ConfigError("model.grounding", "text", "needs item vectors: `lsc4rec embed items ... --out F`, then "
                                                     "`train llm --vectors F`")
    if index.kind != "atomic":
        raise ConfigError("tokenizer.kind", index.kind, "text grounding needs atomic item tokens")
    if len(item_vectors) != index.num_items:
        raise ConfigError("--vectors", f"{len(item_vectors)} rows", f"the catalogue has {index.num_items} items")
    hidden = model.get_input_embeddings().weight.shape[1]
    std = getattr(model.config, "initializer_range", 0.02)
    return TextGrounding(item_vectors, hidden, trained_items(split.train, index.num_items), std)


def train(dataset: Dataset, config: LLMConfig, out: str | Path | None = None,
          embeddings: np.ndarray | None = None, progress: bool = True, item_vectors: np.ndarray | None = None,
          vectors_meta: dict | None = None, vectors_whitening: dict | None = None):
    """Train one model with validation-based early stopping; returns (LLMGenerator, metrics). Saves to `out` if given.

    `embeddings` feed semantic ids; `item_vectors` (N, d) ground the item tokens of a text-grounded model;
    `vectors_whitening` ({"mean", "whitening"} of the vectors file) is saved beside it for items added later.
    """
    import torch

    tc, mc = config.train, config.model
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    started = time.perf_counter()
    split = cloud_split(dataset, tc)
    index = build_index(dataset.items, config.tokenizer, embeddings, cache_dir=out)
    model = build_model(mc, index.vocab_size, index.depth, tc.seed)
    generator = LLMGenerator(model, index, mc.max_history)
    data = windows(split.train, mc.max_history, tc.window_stride or mc.max_history)
    valid = _subsample(split.valid, tc.valid_users, rng)
    grounding = make_grounding(model, config, index, split, item_vectors)
    if tc.freeze_blocks and grounding is None:
        raise ConfigError("train.freeze_blocks", True, "needs model.grounding = text (nothing else would train)")
    groups = [] if tc.freeze_blocks else [{"params": list(model.parameters()), "lr": tc.block_lr or tc.lr}]
    model.requires_grad_(not tc.freeze_blocks)
    if grounding is not None:
        groups.append({"params": list(grounding.parameters()), "lr": tc.lr})
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    bias = level_bias(index)
    best, best_state, best_grounding, history, stale = -1.0, None, None, [], 0
    bar = tqdm(range(tc.epochs), desc="train llm", disable=not progress, file=None)
    for epoch in bar:
        model.train()
        if grounding is not None:
            grounding.train()
        losses = []
        order = rng.permutation(len(data)) if len(data) else []
        for start in range(0, len(data), tc.batch_size):
            batch = [data[i] for i in order[start:start + tc.batch_size]]
            loss = batch_loss(model, *batch_tensors(batch, index), bias, tc.embedding_dropout, grounding,
                              tc.mask_untrained)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], tc.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        if grounding is not None:
            grounding.write_into(model)  # the generator scores with the model's own (tied) token table
        figures = evaluate_examples(generator, valid, n=50, ks=(10, 50))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "valid_ndcg@10": figures["ndcg@10"],
                        "valid_recall@50": figures["recall@50"]})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", ndcg10=f"{figures['ndcg@10']:.4f}")
        if figures["ndcg@10"] > best:
            best, stale = figures["ndcg@10"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_grounding = None if grounding is None else {k: v.detach().clone() for k, v in grounding.state_dict().items()}
        else:
            stale += 1
            if stale >= tc.patience:
                break
        if tc.max_minutes and time.perf_counter() - started > 60 * tc.max_minutes:
            break
    model.load_state_dict(best_state)
    model.eval()
    bias = None
    if grounding is not None:
        grounding.load_state_dict(best_grounding)
        bias = cold_bias(grounding.keep[NUM_SPECIAL:, 0].numpy() > 0, index.vocab_size, mc.cold_boost)
        generator = LLMGenerator(model, index, mc.max_history, token_bias=bias)
    best_epoch = max(history, key=lambda h: h["valid_ndcg@10"])
    metrics = {"best_epoch": best_epoch["epoch"], "valid_ndcg@10": best_epoch["valid_ndcg@10"],
               "valid_recall@50": best_epoch["valid_recall@50"], "epochs_run": len(history),
               "train_seconds": time.perf_counter() - started, "parameters": count_parameters(model),
               "windows": len(data), "valid_users": len(valid), "protocol": tc.protocol,
               "stopped_by": _stop_reason(history, tc), "vocab_size": index.vocab_size, "code_depth": index.depth,
               "grounding": config.model.grounding, "item_vectors": vectors_meta or {}, "history": history}
    if out is not None:
        generator = save_run(out, model, index, config, metrics, bias, items=dataset.items)
        if grounding is not None:
            grounding.save(out, vectors_meta or {}, vectors_whitening)
    return generator, metrics


def _subsample(examples, limit: int, rng: np.random.Generator):
    """At most `limit` validation examples (0 = all), chosen with the run's seed."""
    if not limit or len(examples) <= limit:
        return examples
    keep = np.sort(rng.choice(len(examples), limit, replace=False))
    return Examples(examples.users[keep], tuple(examples.histories[i] for i in keep), examples.targets[keep])


def _stop_reason(history: list[dict], config: TrainConfig) -> str:
    """Why training ended: patience, the epoch cap, or the time budget."""
    best = max(range(len(history)), key=lambda i: history[i]["valid_ndcg@10"])
    if len(history) - 1 - best >= config.patience:
        return "patience"
    return "epochs" if len(history) >= config.epochs else "max_minutes"
