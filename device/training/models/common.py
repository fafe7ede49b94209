"""What every SRM shares: the scoring interface, the history bias and batched dot-product scoring."""
from __future__ import annotations

import torch
from torch import nn

from shared.config import check

NEG_INF = -1e9  # large negative instead of -inf: exported graphs and softmax stay finite


class SequentialRecommender(nn.Module):
    """Base class: `forward(history (B, T), candidates (B, C)) -> scores (B, C)`, 0 = padding.

    Models that encode every position causally (SASRec, GRU4Rec) set `all_positions = True` and
    implement `encode(history) -> (B, T, d)` and `item_vectors(items) -> (..., d)`; training then predicts the
    next item at every position. Every model is built from one config dataclass, its `config_class`, which
    holds `num_items` and `max_len` (device.training.models.build_model).
    """

    config_class: type  # the frozen config dataclass the constructor takes
    all_positions = False
    # The largest candidate axis an exported ExecuTorch program plans memory for (export.ExportConfig).
    export_candidates_max = 2048
    num_items: int
    max_len: int
    history_bias: "HistoryBias | None"  # every model sets it in __init__ (None unless its config asks)

    def with_history_bias(self, scores: torch.Tensor, history: torch.Tensor,
                          candidates: torch.Tensor | None = None) -> torch.Tensor:
        """`scores` (B, C) of `candidates`, or (B, N + 1) of the whole catalogue when `candidates` is None,
        plus the learned offsets for items already in `history` (unchanged without a HistoryBias)."""
        if self.history_bias is None:
            return scores
        if candidates is None:
            return scores + self.history_bias.catalogue(history, scores.shape[1])
        return scores + self.history_bias.catalogue(history, self.num_items + 1).gather(1, candidates)

    def for_executorch(self) -> nn.Module:
        """A module that gives `forward`'s scores from the same parameters, in operators XNNPACK delegates: what
        export.write_pte lowers (a model whose `forward` already lowers well returns itself)."""
        return self

    def score_all(self, history: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """(B, N + 1) scores of the whole catalogue; column 0 (padding) is NEG_INF."""
        batch = history.shape[0]
        items = torch.arange(1, self.num_items + 1, device=history.device)
        parts = [torch.full((batch, 1), NEG_INF, device=history.device)]
        for start in range(0, self.num_items, chunk):
            cands = items[start:start + chunk].unsqueeze(0).expand(batch, -1)
            parts.append(self.forward(history, cands))
        return torch.cat(parts, dim=1)


def check_common_fields(config) -> None:
    """The checks of the fields the built-in models' configs share: num_items and max_len at least 1, dropout in
    [0, 1) (a config's `__post_init__` calls it, then checks its own fields)."""
    check(config.num_items >= 1, "num_items", config.num_items, "must be at least 1")
    check(config.max_len >= 1, "max_len", config.max_len, "must be at least 1")
    check(0.0 <= config.dropout < 1.0, "dropout", config.dropout, "must be in [0, 1)")


def dot_scores(vectors: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
    """(B, C, d) candidate vectors . (B, d) user states -> (B, C) scores, as one batched matrix-vector
    product: in ONNX a single MatMul, which scored the 1,682-item catalogue about 15% faster per call than
    the (B, C, d) product + sum (onnxruntime 1.32, one thread) and costs the same for 50 candidates. bmm, not @:
    the same kernel in torch and ONNX, and for ExecuTorch no expand_copy outside the XNNPACK delegate."""
    return torch.bmm(vectors, user.reshape(-1, user.shape[-1], 1)).squeeze(-1)


def linear_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding copies of `weight` (out, in) and `bias` (out,), or no bias: how the ExecuTorch forms
    (SequentialRecommender.for_executorch) hold part of a layer's parameters as a Linear of its own."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class HistoryBias(nn.Module):
    """A learned score offset for items already in the history, one per recency (age 0 = the last item).

    Dot-product scoring with tied item embeddings ranks the history's own items high: the user state
    carries the last item's embedding, and an item is closest to itself. Training this offset with the
    model lets it learn how likely a repeat is; it starts at 0 and uses only the model's input.

    Candidates take their offsets from `catalogue` with a gather (SequentialRecommender.with_history_bias):
    in ONNX one ScatterElements over N + 1 columns plus a Gather, about 10 us, where comparing every
    candidate with every history slot (B, C, T) cost 19 us for 50 candidates and 510 us for the 1,682-item
    catalogue. Padding slots (id 0) need no mask: candidates are ids >= 1, and column 0 of catalogue
    scores is set to NEG_INF after the offsets are added.
    """

    # Adam moves a parameter by about lr per step whatever its gradient, and a useful offset is several
    # logits: the parameter is the offset / STEP_SCALE, so it can get there within a training run.
    STEP_SCALE = 20.0

    def __init__(self, max_len: int):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(max_len))

    @property
    def by_age(self) -> torch.Tensor:
        """(max_len,) offsets; index 0 is the most recent item."""
        return self.raw * self.STEP_SCALE

    def catalogue(self, history: torch.Tensor, columns: int) -> torch.Tensor:
        """(B, T) history -> (B, columns) offsets over item ids 0..columns - 1."""
        slots = self.by_age[: history.shape[1]].flip(0).expand(history.shape[0], -1)
        offsets = torch.zeros(history.shape[0], columns, dtype=self.raw.dtype, device=history.device)
        return offsets.scatter_add(1, history, slots)

    def positions(self, history: torch.Tensor, columns: int) -> torch.Tensor:
        """(B, T) history -> (B, T, columns): the offsets seen from every position t (items <= t), for
        training on all positions at once."""
        b, t = history.shape
        age = torch.arange(t).unsqueeze(1) - torch.arange(t).unsqueeze(0)  # (T, T): query t, key s
        values = self.by_age[age.clamp(0, len(self.raw) - 1)] * (age >= 0)  # (T, T), 0 for future keys
        offsets = torch.zeros(b, t, columns, dtype=self.raw.dtype, device=history.device)
        return offsets.scatter_add(2, history.unsqueeze(1).expand(-1, t, -1), values.expand(b, -1, -1))
