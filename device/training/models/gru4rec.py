"""GRU4Rec (Hidasi et al. 2016, with the full cross-entropy of later work): a GRU over the item history."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from device.training.models import MODELS
from device.training.models.common import NEG_INF, HistoryBias, SequentialRecommender, check_common_fields, dot_scores
from shared.config import check


@dataclass(frozen=True)
class GRU4RecConfig:
    """Architecture only; training settings live in device.training.train.TrainConfig."""

    num_items: int = 1  # N; ids are 1..N, 0 = padding
    max_len: int = 50  # T
    hidden: int = 64  # item embedding size d (also the output size)
    gru_hidden: int = 128
    layers: int = 1
    dropout: float = 0.3
    history_bias: bool = False  # learn a score offset for items already in the history (HistoryBias)

    def __post_init__(self):
        check_common_fields(self)
        check(self.layers >= 1, "layers", self.layers, "must be at least 1")


@MODELS.register("gru4rec")
class GRU4Rec(SequentialRecommender):
    config_class = GRU4RecConfig
    all_positions = True

    def __init__(self, config: GRU4RecConfig):
        super().__init__()
        self.config = config
        self.num_items, self.max_len = config.num_items, config.max_len
        self.item_emb = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.drop = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.hidden, config.gru_hidden, num_layers=config.layers, batch_first=True)
        self.out = nn.Linear(config.gru_hidden, config.hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        self.history_bias = HistoryBias(config.max_len) if config.history_bias else None

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """(B, T) int64, 0 = padding (left) -> (B, T, d); position t has seen items <= t.

        Left padding means the GRU first reads zero vectors (the padding embedding); the state they
        leave is the same for every user, so padding carries no information. Padded outputs are zeroed.
        """
        keep = (history > 0).unsqueeze(-1)  # (B, T, 1)
        x = self.drop(self.item_emb(history))  # (B, T, d), zero at padding
        states, _ = self.gru(x)  # (B, T, H)
        return self.out(self.drop(states)) * keep

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)

    def item_table(self) -> torch.Tensor:
        """(N + 1, d): the vectors a catalogue-free device is sent (input and output embeddings are one table)."""
        return self.item_emb.weight

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        """(layers, B, H): the state before any item (the catalogue-free device's incremental start)."""
        return torch.zeros(self.config.layers, batch, self.config.gru_hidden)

    def step(self, vector: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One new item's vector (B, d) and the state (layers, B, H) -> (user state (B, d), next state): the
        incremental update of a catalogue-free device. Stepping from `initial_state` over a history's items equals
        `encode` on that history unpadded (`encode` also reads the left padding, zero vectors, first)."""
        out, state = self.gru(vector.unsqueeze(1), state)
        return self.out(out[:, -1]), state

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, T) int64, candidates (B, C) int64 -> (B, C) float32 scores (logits)."""
        user = self.encode(history)[:, -1, :]  # (B, d)
        return self.with_history_bias(dot_scores(self.item_vectors(candidates), user), history, candidates)

    def score_all(self, history: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        scores = self.with_history_bias(self.encode(history)[:, -1, :] @ self.item_emb.weight.T, history)
        scores[:, 0] = NEG_INF
        return scores
