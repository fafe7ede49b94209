"""SASRec (Kang & McAuley 2018): causal self-attention over the item history, learned or rotary positions.

With `positions = "rotary"` (RoPE, Su et al. 2021) attention depends only on how far apart two items are, so a
device can keep each block's keys and values of past items and compute only the newest position per event
(`SASRec.step`): exact with respect to `encode`, which also lets each item see at most the max_len - 1 items before it
(the sliding window every training example already fits in). Learned positions are right-aligned, so every
position's input changes when an item is appended, and only a full re-encode is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from device.training.models import MODELS
from device.training.models.common import (NEG_INF, HistoryBias, SequentialRecommender, check_common_fields,
                                           dot_scores, linear_copy)
from shared.config import check


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture only; training settings live in device.training.train.TrainConfig."""

    num_items: int = 1  # N; ids are 1..N, 0 = padding
    max_len: int = 50  # T: histories are left-padded / truncated to this length
    hidden: int = 64  # d
    layers: int = 2
    heads: int = 2
    inner: int = 256  # feed-forward width
    dropout: float = 0.2
    scale_embeddings: bool = True  # item embeddings x sqrt(d) before positions are added (SASRec paper; RecBole: no)
    tied_output: bool = True  # score with the input item embeddings (SASRec, RecBole); False = a table of its own
    history_bias: bool = False  # learn a score offset for items already in the history (HistoryBias)
    positions: str = "learned"  # "learned" (right-aligned table, the paper's) or "rotary" (an incremental device)

    def __post_init__(self):
        check_common_fields(self)
        check(self.hidden % self.heads == 0, "heads", self.heads, f"must divide hidden ({self.hidden})")
        check(self.positions in ("learned", "rotary"), "positions", self.positions, "must be learned or rotary")
        check(self.positions == "learned" or (self.hidden // self.heads) % 2 == 0, "heads", self.heads,
              "rotary positions need an even head size (hidden / heads)")


ROPE_BASE = 10000.0


def rotary_tables(positions: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (P, head_size / 2) of RoPE's angles position x base^(-2i / head_size)."""
    freqs = ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (..., P, head_size) with tables (P, head_size / 2): the two halves turned by each angle."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]  # slices, not chunk: XNNPACK delegates slice_copy, not split
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, batch: int, queries: int,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # x: (B T, d) rows of B histories; allowed: (B, 1, Q, T) bool, True where query q may look at key s.
        # Only the last `queries` positions are computed as queries (all T are keys and values): (B Q, d).
        # rope: cos and sin (T, d/H/2) of the T positions (rotary positions), None for learned ones.
        d = x.shape[1]
        # All T rows are projected to queries too, then sliced: projecting only the query rows (with sliced
        # weights) saved 2-4% in ONNX but doubled ExecuTorch's time when this graph was lowered (XNNPACK delegates
        # only constant weights; the .pte now comes from SASRecForExecuTorch).
        q, k, v = self.qkv(x).reshape(batch, -1, 3 * d).split(d, dim=2)
        q = q[:, q.shape[1] - queries:]
        q, k, v = (z.reshape(batch, -1, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if rope is not None:
            cos, sin = rope
            q, k = rotate(q, cos[cos.shape[0] - queries:], sin[sin.shape[0] - queries:]), rotate(k, cos, sin)
        # softmax(q k^T / sqrt(d/H) masked) v, with dropout on the weights; one fused op in eager torch and
        # one Attention node in ONNX opset 23 (fewer, faster nodes than the spelled-out form; its head reshapes are
        # rewritten away at export, device.training.export.AttentionOnHiddenStates).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, Q, d/H)
        return self.proj(y.transpose(1, 2).reshape(batch * queries, d))


class Block(nn.Module):
    """Post-norm transformer block, as in the SASRec paper and RecBole."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(config.hidden, config.inner), nn.GELU(),
                                nn.Linear(config.inner, config.hidden), nn.Dropout(config.dropout))
        self.norm2 = nn.LayerNorm(config.hidden, eps=1e-12)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, batch: int, queries: int,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B T, d) -> (B Q, d): the states of the last Q = `queries` positions of each history."""
        attended = self.drop(self.attn(x, allowed, batch, queries, rope))
        if x.shape[0] != batch * queries:  # fewer queries than positions: the residual is their rows only
            x = x.reshape(batch, -1, x.shape[1])[:, -queries:].reshape(batch * queries, -1)
        x = self.norm1(x + attended)
        return self.norm2(x + self.ff(x))


@MODELS.register("sasrec")
class SASRec(SequentialRecommender):
    config_class = SASRecConfig
    all_positions = True

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.num_items, self.max_len = config.num_items, config.max_len
        self.item_emb = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.out_emb = None if config.tied_output else nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden) if config.positions == "learned" else None
        self.norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.apply(self._init)
        self.history_bias = HistoryBias(config.max_len) if config.history_bias else None

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(self, history: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T) int64, 0 = padding (left) -> (B, T, d) causal states; position t has seen items <= t.

        With `last_only`, (B, 1, d): the final block computes only the most recent position (the one
        scoring needs), which skips most of its work. It equals the last row of the full result, except that
        it is not zeroed for an all-padding history (4 graph nodes less per call; such a history has no
        information either way, and its scores are then the same for every user).
        """
        return self._encode(self.item_emb(history), history > 0, last_only)

    def user_from_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, T, d) item vectors of the history, zero rows = padding -> (B, d) user states: the catalogue-free
        device's encoder (the item table stays in the cloud; device.training.encoder_export)."""
        keep = vectors.abs().amax(dim=-1) > 0
        return self._encode(vectors, keep, last_only=True).reshape(-1, self.config.hidden)

    def _encode(self, x: torch.Tensor, keep: torch.Tensor, last_only: bool) -> torch.Tensor:
        """`encode` from the history's item vectors x (B, T, d) and its non-padding mask keep (B, T)."""
        t = x.shape[1]
        positions = torch.arange(t, device=x.device) + (self.max_len - t)  # right-aligned slots
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.hidden)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:  # rotary: any offset gives the same attention (only distances count)
            rope = rotary_tables(positions, self.config.hidden // self.config.heads)
        x = self.drop(self.norm(x)) * keep.unsqueeze(-1)
        # each item sees the max_len - 1 before it at most (a wider input is the same sliding window; step() keeps it)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril().triu(-(self.max_len - 1))
        # Keys must be real items; the diagonal stays open so padded rows never attend to nothing.
        allowed = (causal & keep.unsqueeze(1)) | torch.eye(t, dtype=torch.bool, device=x.device)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T)
        b, d = x.shape[0], x.shape[2]
        # The blocks work on (B T, d) rows, not (B, T, d): each Linear is then one Gemm node in ONNX instead
        # of MatMul + Add, about 5% less time per call (onnxruntime 1.32, one thread).
        x = x.reshape(b * t, d)
        for i, block in enumerate(self.blocks):
            queries = 1 if last_only and i == len(self.blocks) - 1 else t
            x = block(x, allowed[:, :, t - queries:], b, queries, rope)
        x = x.reshape(b, -1, d)
        return x if last_only else x * keep.unsqueeze(-1)

    def step(self, vector: torch.Tensor, position: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor,
             past_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new item for a rotary model, with each block's keys and values of the items before it.

        vector (1, d) the new item's vector; position (1,) int64 its index in the history (any origin: only
        distances count); past_keys / past_values (layers, H, S, d/H) with S = max_len - 1 slots, oldest first
        (already rotated); past_mask (S,) bool, True where a slot holds an item. Returns the user state (1, d) and
        the new item's keys and values (layers, H, 1, d/H), which the caller appends (dropping the oldest).
        """
        d, heads = self.config.hidden, self.config.heads
        cos, sin = rotary_tables(position, d // heads)  # (1, d/H/2)
        x = vector * math.sqrt(d) if self.config.scale_embeddings else vector
        x = self.norm(x)
        allowed = torch.cat([past_mask, torch.ones(1, dtype=torch.bool)]).reshape(1, 1, 1, -1)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            q, k, v = (z.reshape(1, heads, 1, d // heads) for z in block.attn.qkv(x).split(d, dim=1))
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            keys.append(k[0])
            values.append(v[0])
            k_all = torch.cat([past_keys[i].unsqueeze(0), k], dim=2)
            v_all = torch.cat([past_values[i].unsqueeze(0), v], dim=2)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allowed)  # (1, H, 1, d/H)
            x = block.norm1(x + block.attn.proj(y.reshape(1, d)))
            x = block.norm2(x + block.ff(x))
        return x, torch.stack(keys), torch.stack(values)

    def for_executorch(self) -> "SASRecForExecuTorch":
        return SASRecForExecuTorch(self)

    def item_table(self) -> torch.Tensor:
        """(N + 1, d): the vectors a catalogue-free device is sent, one per item, used both to encode a history and
        to score a candidate; only a tied model has one table for both."""
        if self.out_emb is not None:
            raise ValueError("a SASRec with tied_output = false has two item tables; the catalogue-free device "
                             "needs one (train with tied_output = true)")
        return self.item_emb.weight

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Output embeddings (tied to the input ones by default): (…,) -> (…, d)."""
        return self.item_emb(items) if self.out_emb is None else self.out_emb(items)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, T) int64, candidates (B, C) int64 -> (B, C) float32 scores (logits)."""
        user = self.user_state(history)
        return self.with_history_bias(dot_scores(self.item_vectors(candidates), user), history, candidates)

    def user_state(self, history: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, d): the state after the most recent item, the vector every item is scored against."""
        return self.encode(history, last_only=True).reshape(-1, self.config.hidden)

    def score_all(self, history: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """(B, N + 1) logits over the catalogue; column 0 (padding) is NEG_INF."""
        table = self.item_emb if self.out_emb is None else self.out_emb
        scores = self.with_history_bias(self.user_state(history) @ table.weight.T, history)
        scores[:, 0] = NEG_INF
        return scores


class LayerNormAsGemm(nn.Module):
    """nn.LayerNorm over the last axis with both means taken by a (d -> 1) Linear: XNNPACK delegates linear, sub,
    mul and rsqrt, not native_layer_norm (executorch 1.5.1), and every op it does not take splits the delegate."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        d = norm.normalized_shape[0]
        self.mean = nn.Linear(d, 1, bias=False)
        nn.init.constant_(self.mean.weight, 1.0 / d)
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.mean(x)
        return centred * torch.rsqrt(self.mean(centred * centred) + self.eps) * self.weight + self.bias


class _BlockForExecuTorch(nn.Module):
    """`Block` in eval mode on (B, T, d) states, from the block's parameters: query, key and value Linears instead
    of one Linear and a split, attention as bmm, scale, additive mask, softmax, bmm, and LayerNormAsGemm."""

    def __init__(self, block: Block, heads: int, rope: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        qkv, d = block.attn.qkv, block.attn.proj.in_features
        self.q, self.k, self.v = (linear_copy(qkv.weight[i * d:(i + 1) * d], qkv.bias[i * d:(i + 1) * d])
                                  for i in range(3))
        self.proj, self.ff = block.attn.proj, block.ff
        self.norm1, self.norm2 = LayerNormAsGemm(block.norm1), LayerNormAsGemm(block.norm2)
        self.heads, self.rope = heads, rope

    def _split_heads(self, x: torch.Tensor, rotated: bool) -> torch.Tensor:
        """(B, P, d) -> (B H, P, d/H); queries and keys are `rotated` by rotary positions (the tables' last P)."""
        b, p, d = x.shape
        x = x.reshape(b, p, self.heads, d // self.heads).permute(0, 2, 1, 3).reshape(b * self.heads, p, -1)
        if self.rope is None or not rotated:
            return x
        cos, sin = self.rope
        return rotate(x, cos[cos.shape[0] - p:], sin[sin.shape[0] - p:])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) states and the (B, 1, Q, T) additive mask of the last Q positions -> their (B, Q, d) states."""
        b, t, d = x.shape
        queries, size = mask.shape[2], d // self.heads
        x_q = x if queries == t else x[:, t - queries:]  # every position is a key and a value, the last Q queries
        q, k = self._split_heads(self.q(x_q), rotated=True), self._split_heads(self.k(x), rotated=True)
        v = self._split_heads(self.v(x), rotated=False)
        weights = torch.bmm(q, k.transpose(1, 2)).reshape(b, self.heads, queries, t) * size ** -0.5 + mask
        y = torch.bmm(torch.softmax(weights, dim=-1).reshape(b * self.heads, queries, t), v)
        y = y.reshape(b, self.heads, queries, size).permute(0, 2, 1, 3).reshape(b, queries, d)
        x = self.norm1(x_q + self.proj(y))
        return self.norm2(x + self.ff(x))


class SASRecForExecuTorch(nn.Module):
    """`SASRec.forward` on histories of max_len items, from a snapshot of the model's parameters, written as operators
    XNNPACK delegates, so that the whole encoder and the scoring are one delegate call (export.write_pte; ONNX keeps
    `forward`, whose fused Attention node is faster there). The positions (or rotary tables) and the causal part of
    the attention mask are constants; the key padding is added to it as a float mask, once for all blocks."""

    def __init__(self, model: SASRec):
        super().__init__()
        config, t = model.config, model.max_len
        self.model = model
        self.emb_scale = math.sqrt(config.hidden) if config.scale_embeddings else 1.0
        positions = torch.arange(t)
        with torch.no_grad():
            self.positions = None if model.pos_emb is None else model.pos_emb(positions).clone()
        rope = None if model.pos_emb is not None else rotary_tables(positions, config.hidden // config.heads)
        self.norm = LayerNormAsGemm(model.norm)
        self.blocks = nn.ModuleList(_BlockForExecuTorch(block, config.heads, rope) for block in model.blocks)
        # allowed[q, s] as in SASRec._encode (T = max_len: the window is the whole causal triangle): s <= q, keys
        # that are items, and the diagonal whatever the padding (padding is added off the diagonal only)
        self.causal = torch.zeros(t, t).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), NEG_INF)
        self.off_diagonal = 1.0 - torch.eye(t)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        model = self.model
        b, t = history.shape
        keep = (history > 0).to(torch.float32)
        x = model.item_emb(history) * self.emb_scale
        if self.positions is not None:
            x = x + self.positions
        x = self.norm(x) * keep.reshape(b, t, 1)  # reshape, not unsqueeze: XNNPACK unsqueezes the last axis only
        mask = self.causal + self.off_diagonal * ((1.0 - keep) * NEG_INF).reshape(b, 1, 1, t)  # (B, 1, T, T)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        x = self.blocks[-1](x, mask[:, :, t - 1:])  # scoring needs the last position only: (B, 1, d)
        scores = dot_scores(model.item_vectors(candidates), x.reshape(b, -1))
        return model.with_history_bias(scores, history, candidates)

    def step(self, vector: torch.Tensor, position: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor,
             past_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`SASRec.step` (same inputs and outputs) in this form's operators: what the user encoder's .pte lowers."""
        config = self.model.config
        d, heads = config.hidden, config.heads
        size = d // heads
        cos, sin = rotary_tables(position, size)  # (1, d/H/2)
        x = self.norm(vector * self.emb_scale)
        # the new item's own slot is always allowed; an empty past slot gets NEG_INF
        mask = torch.cat([(1.0 - past_mask.to(torch.float32)) * NEG_INF, torch.zeros(1)]).reshape(1, 1, -1)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            q, k = (rotate(linear(x).reshape(heads, 1, size), cos, sin) for linear in (block.q, block.k))
            v = block.v(x).reshape(heads, 1, size)
            keys.append(k)
            values.append(v)
            k_all, v_all = torch.cat([past_keys[i], k], dim=1), torch.cat([past_values[i], v], dim=1)  # (H, S + 1, d/H)
            weights = torch.bmm(q, k_all.transpose(1, 2)) * size ** -0.5 + mask  # (H, 1, S + 1)
            x = block.norm1(x + block.proj(torch.bmm(torch.softmax(weights, dim=-1), v_all).reshape(1, d)))
            x = block.norm2(x + block.ff(x))
        return x, torch.stack(keys), torch.stack(values)
