"""GRU4Rec (Hidasi et al. 2016, with the full cross-entropy of later work): a GRU over the item history."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from device.training.models import MODELS
from device.training.models.common import (NEG_INF, HistoryBias, SequentialRecommender, check_common_fields,
                                           dot_scores, linear_copy)
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

    def for_executorch(self) -> "GRU4RecForExecuTorch":
        return GRU4RecForExecuTorch(self)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, T) int64, candidates (B, C) int64 -> (B, C) float32 scores (logits)."""
        user = self.encode(history)[:, -1, :]  # (B, d)
        return self.with_history_bias(dot_scores(self.item_vectors(candidates), user), history, candidates)

    def score_all(self, history: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        scores = self.with_history_bias(self.encode(history)[:, -1, :] @ self.item_emb.weight.T, history)
        scores[:, 0] = NEG_INF
        return scores


class GRU4RecForExecuTorch(nn.Module):
    """`GRU4Rec.forward` from a snapshot of the model's parameters, written as operators XNNPACK delegates, so that
    the whole program is one delegate call (export.write_pte; ONNX keeps `forward`, whose nn.GRU is one GRU node).
    torch.export unrolls the GRU over the T steps either way; here the first layer's input projections of all steps
    are two GEMMs before the loop, and a step is two Linears of the state (reset and update gates together, then
    the new gate) and element-wise ops, with no split or squeeze. Per layer and step, as nn.GRU:
    r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}), n = tanh(W_in x + b_in + r (W_hn h + b_hn)),
    h' = (1 - z) n + z h = n + z (h - n). It still runs about 3x slower than onnxruntime runs `forward` (T = 50,
    H = 128, one thread): the 2 T one-row GEMMs of the state take most of it (XNNPACK's f32 kernel takes as long
    for one row as for four) and the ~12 element-wise ops per step another ~100 us."""

    def __init__(self, model: GRU4Rec):
        super().__init__()
        self.model, self.size = model, model.config.gru_hidden
        rz, n = slice(0, 2 * self.size), slice(2 * self.size, None)
        self.inputs, self.recurrent = nn.ModuleList(), nn.ModuleList()
        for layer in range(model.config.layers):
            w_i, w_h, b_i, b_h = (getattr(model.gru, f"{name}_l{layer}").detach()
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            # b_h{r,z} join the input biases; b_hn stays with W_hn, inside r (...)
            self.inputs.append(nn.ModuleList([linear_copy(w_i[rz], b_i[rz] + b_h[rz]), linear_copy(w_i[n], b_i[n])]))
            self.recurrent.append(nn.ModuleList([linear_copy(w_h[rz], None), linear_copy(w_h[n], b_h[n])]))

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        model, size = self.model, self.size
        b, t = history.shape
        x = model.item_emb(history)
        first_rz, first_n = (linear(x) for linear in self.inputs[0])  # (B, T, 2H), (B, T, H)
        states = [torch.zeros(b, 1, size) for _ in self.recurrent]  # (B, 1, H) per layer
        for step in range(t):
            for layer, (to_rz, to_n) in enumerate(self.recurrent):
                if layer == 0:
                    in_rz, in_n = first_rz[:, step:step + 1], first_n[:, step:step + 1]
                else:
                    in_rz, in_n = (linear(states[layer - 1]) for linear in self.inputs[layer])
                h = states[layer]
                rz = torch.sigmoid(in_rz + to_rz(h))
                r, z = rz[..., :size], rz[..., size:]
                n = torch.tanh(in_n + r * to_n(h))
                states[layer] = n + z * (h - n)
        keep = (history[:, t - 1:] > 0).to(torch.float32)  # (B, 1): encode zeroes padded positions
        user = model.out(states[-1].reshape(b, size)) * keep
        return model.with_history_bias(dot_scores(model.item_vectors(candidates), user), history, candidates)
