"""DIN (Zhou et al. 2018): the candidate attends over the history; an MLP scores the pair."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from device.training.models import MODELS
from device.training.models.common import HistoryBias, SequentialRecommender, check_common_fields


@dataclass(frozen=True)
class DINConfig:
    """Architecture only; training settings live in device.training.train.TrainConfig."""

    num_items: int = 1  # N; ids are 1..N, 0 = padding
    max_len: int = 50  # T
    hidden: int = 32  # item embedding size d
    attention_units: int = 64
    mlp_units: int = 64
    dropout: float = 0.2
    history_bias: bool = False  # learn a score offset for items already in the history (HistoryBias)

    def __post_init__(self):
        check_common_fields(self)


@MODELS.register("din")
class DIN(SequentialRecommender):
    config_class = DINConfig
    all_positions = False  # the history summary depends on the candidate, so no per-position states
    export_candidates_max = 512  # it materialises (B, C, T, 4d) attention inputs: smaller ExecuTorch bounds

    def __init__(self, config: DINConfig):
        super().__init__()
        self.config = config
        self.num_items, self.max_len = config.num_items, config.max_len
        d = config.hidden
        self.item_emb = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)  # recency matters for next-item prediction
        self.attention = nn.Sequential(nn.Linear(4 * d, config.attention_units), nn.PReLU(),
                                       nn.Linear(config.attention_units, 1))
        self.mlp = nn.Sequential(nn.Linear(3 * d, config.mlp_units), nn.PReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.mlp_units, 1))
        self.item_bias = nn.Embedding(config.num_items + 1, 1, padding_idx=0)  # popularity prior
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.zeros_(self.item_bias.weight)
        self.history_bias = HistoryBias(config.max_len) if config.history_bias else None

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, T) int64, candidates (B, C) int64 -> (B, C) float32 scores (logits)."""
        b, t = history.shape
        c = candidates.shape[1]
        keep = (history > 0).to(torch.float32)  # (B, T)
        positions = torch.arange(t, device=history.device) + (self.max_len - t)
        h = self.drop(self.item_emb(history) + self.pos_emb(positions))  # (B, T, d)
        q = self.item_emb(candidates)  # (B, C, d)
        hh = h.unsqueeze(1).expand(b, c, t, h.shape[-1])  # (B, C, T, d)
        qq = q.unsqueeze(2).expand_as(hh)
        weights = self.attention(torch.cat([hh, qq, hh - qq, hh * qq], dim=-1)).squeeze(-1)  # (B, C, T)
        # DIN keeps un-normalised weights (sum pooling); padding contributes nothing.
        weights = weights * keep.unsqueeze(1) / keep.sum(1).clamp(min=1.0).view(b, 1, 1)
        pooled = (weights.unsqueeze(-1) * hh).sum(2)  # (B, C, d)
        pair = torch.cat([pooled, q, pooled * q], dim=-1)  # (B, C, 3d)
        scores = self.mlp(pair).squeeze(-1) + (pooled * q).sum(-1) + self.item_bias(candidates).squeeze(-1)
        return self.with_history_bias(scores, history, candidates)
