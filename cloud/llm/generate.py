"""LLMGenerator: batched trie-constrained beam search over item codes, reusing the KV cache."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from cloud.llm.semantic_ids import BOS, PAD, ItemIndex
from shared.generator import check_generate_args
from shared.records import Candidate


class LLMGenerator:
    """Generates N distinct valid unseen items per history; score = the item's sequence log-probability.

    Beam search walks the item trie level by level. At every level it keeps at least
    max(n, beam_width) prefixes *and* enough of them that the unblocked items under the kept
    prefixes number at least n, so the last level can always return exactly n items.
    """

    def __init__(self, model, index: ItemIndex, max_history: int, version: str = "llm",
                 beam_width: int = 0, batch_size: int = 64, token_bias: np.ndarray | None = None):
        self.model = model.eval()
        self.index = index
        self.max_history = int(max_history)
        self.beam_width = int(beam_width)
        self.batch_size = int(batch_size)
        self._version = version
        import torch

        self._child = [torch.from_numpy(c) for c in index.child]  # level l: (nodes_l, K_l)
        self._leaves = [torch.from_numpy(c) for c in index.leaves]  # level l: (nodes_l,)
        self._last_layer = _last_position_layer(self.model)  # None: this architecture runs unchanged
        # (V,) added to every step's log-probabilities, e.g. a bonus for items no training interaction taught
        self._bias = None if token_bias is None else torch.as_tensor(token_bias, dtype=torch.float32)
        self._swap_lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._version

    @property
    def num_items(self) -> int:
        return self.index.num_items

    def generate(self, histories: Sequence[Sequence[int]], n: int,
                 excludes: Sequence[Sequence[int]] | None = None) -> list[list[Candidate]]:
        blocked = check_generate_args(histories, n, excludes, self.num_items)
        items, scores = self.rank(histories, n, blocked)
        # tolist() converts in C; building Candidates from numpy scalars costs about 3x more per request
        return [list(map(Candidate, row_i, row_s)) for row_i, row_s in zip(items.tolist(), scores.tolist())]

    def rank(self, histories: Sequence[Sequence[int]], n: int,
             blocked: Sequence[set[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(B, n) item ids best first and their log-probabilities; `blocked` must leave n items per row."""
        out_items, out_scores = [], []
        for start in range(0, len(histories), self.batch_size):
            stop = start + self.batch_size
            items, scores = self._rank_batch(histories[start:stop], n, blocked[start:stop])
            out_items.append(items)
            out_scores.append(scores)
        if not out_items:
            return np.zeros((0, n), dtype=np.int64), np.zeros((0, n), dtype=np.float32)
        return np.concatenate(out_items), np.concatenate(out_scores)

    def prompt(self, histories: Sequence[Sequence[int]]):
        """Left-padded prompt tensors: ids (B, T), attention mask (B, T), positions (B, T)."""
        import torch

        rows = [np.concatenate([[BOS], self.index.tokens(list(h)[-self.max_history:])]) if len(h)
                else np.asarray([BOS]) for h in histories]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), PAD, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return ids, mask, positions

    def _blocked_tensors(self, blocked: Sequence[set[int]]):
        """Per row: blocked-item mask (B, N + 1) and, per level l >= 1, blocked items under each node (B, nodes_l)."""
        import torch

        rows = np.concatenate([np.full(len(s), b) for b, s in enumerate(blocked)]).astype(np.int64) \
            if blocked else np.zeros(0, dtype=np.int64)
        items = np.concatenate([np.fromiter(s, dtype=np.int64, count=len(s)) for s in blocked]) \
            if blocked else np.zeros(0, dtype=np.int64)
        mask = np.zeros((len(blocked), self.num_items + 1), dtype=bool)
        mask[rows, items] = True
        mask[:, 0] = True
        counts = []
        for level in range(1, self.index.depth):
            c = np.zeros((len(blocked), len(self.index.leaves[level])), dtype=np.int64)
            np.add.at(c, (rows, self.index.node[level][items - 1]), 1)
            counts.append(torch.from_numpy(c))
        return torch.from_numpy(mask), counts

    def _rank_batch(self, histories, n: int, blocked):
        import torch

        with torch.inference_mode():
            ids, mask, positions = self.prompt(histories)
            with self._last_position_only():  # one level (atomic ids): no next step, so no cache to fill
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 use_cache=self.index.depth > 1, logits_to_keep=1)
            logp = self._log_probs(out.logits[:, -1])  # (B, V)
            cache = out.past_key_values
            blocked_items, blocked_counts = self._blocked_tensors(blocked)
            bsz = len(histories)
            node = torch.zeros(bsz, 1, dtype=torch.long)  # (B, W) trie node of each beam
            score = torch.zeros(bsz, 1)  # (B, W) log-probability so far
            pos = positions[:, -1:]  # (B, 1) position of the last token fed
            depth = self.index.depth
            for level in range(depth):
                off, k = self.index.offsets[level], self.index.sizes[level]
                width = node.shape[1]
                step = logp.view(bsz, width, -1)[..., off:off + k]  # (B, W, K)
                child = self._child[level][node]  # (B, W, K): next node, or item id at the last level
                safe = child.clamp(min=0)
                if level == depth - 1:
                    ok = (child >= 0) & ~torch.gather(blocked_items, 1, safe.view(bsz, -1)).view_as(child)
                    cand = torch.where(ok, score[..., None] + step, float("-inf")).view(bsz, -1)
                    top, idx = cand.topk(n, dim=1)  # (B, n)
                    return child.view(bsz, -1).gather(1, idx).numpy(), top.numpy()
                avail = self._leaves[level + 1][safe] - torch.gather(
                    blocked_counts[level], 1, safe.view(bsz, -1)).view_as(child)
                avail = torch.where(child >= 0, avail, 0)  # (B, W, K) unblocked items under each child
                cand = torch.where(avail > 0, score[..., None] + step, float("-inf")).view(bsz, -1)
                keep = self._width(cand, avail.view(bsz, -1), n)
                score, idx = cand.topk(keep, dim=1)  # (B, W')
                beam, tok = idx // k, idx % k
                node = child.view(bsz, -1).gather(1, idx).clamp(min=0)
                flat = (torch.arange(bsz)[:, None] * width + beam).view(-1)  # rows of the cache to keep
                cache.reorder_cache(flat)
                mask = torch.cat([mask[flat], torch.ones(len(flat), 1, dtype=mask.dtype)], dim=1)
                pos = pos[flat] + 1  # (B * W', 1)
                out = self.model(input_ids=(tok + off).view(-1, 1), attention_mask=mask,
                                 position_ids=pos, past_key_values=cache, use_cache=True)
                logp = self._log_probs(out.logits[:, -1])  # (B * W', V)
                cache = out.past_key_values
        raise AssertionError("unreachable: the last level returns")

    def _log_probs(self, logits):
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp if self._bias is None else logp + self._bias

    def _width(self, cand, avail, n: int) -> int:
        """Beams to keep: max(n, beam_width), widened until every row's kept prefixes hold n unblocked items."""
        import torch

        keep = min(max(n, self.beam_width), cand.shape[1])
        order = cand.argsort(dim=1, descending=True)
        covered = torch.gather(avail, 1, order).cumsum(1)  # (B, W*K)
        need = int((covered < n).sum(1).max()) + 1  # smallest prefix of the order reaching n, worst row
        return min(max(keep, need), cand.shape[1])

    @contextmanager
    def _last_position_only(self):
        """During the prompt pass: the last decoder layer computes only the last position's output.

        Only the last position's logits are used, so the last layer's query, attention output and MLP at
        the other positions (about 40% of a 2-layer model's work per prompt token) are wasted; its keys and
        values are still computed at every position (the cache of the next trie levels needs them).
        The layer is swapped in the model for the call only (the lock covers concurrent generate calls;
        nothing else may run the same model object at the same time).
        """
        if self._last_layer is None:
            yield
            return
        layers = self.model.model.layers
        with self._swap_lock:
            original = layers[-1]
            layers[-1] = self._last_layer
            try:
                yield
            finally:
                layers[-1] = original


def _last_position_layer(model):
    """A stand-in for the last decoder layer of a Llama-style model (llama, qwen2; sdpa attention) that
    returns the last position only, (B, 1, H); None when `model` is not one this is exact for.

    Same modules and the same operations as the layer's own forward, restricted to the last query; the
    keys and values of every position go into the cache as the layer itself would put them.
    """
    import torch

    config = getattr(model, "config", None)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if config is None or not layers:
        return None
    if getattr(config, "model_type", None) not in ("llama", "qwen2") or config._attn_implementation != "sdpa":
        return None
    layer = layers[-1]
    attn = getattr(layer, "self_attn", None)
    if attn is None or getattr(attn, "sliding_window", None) is not None:
        return None
    modeling = sys.modules.get(type(attn).__module__)
    rope, repeat_kv = getattr(modeling, "apply_rotary_pos_emb", None), getattr(modeling, "repeat_kv", None)
    if (rope is None or repeat_kv is None
            or not all(hasattr(layer, p) for p in ("input_layernorm", "post_attention_layernorm", "mlp"))
            or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))):
        return None

    class LastPosition(torch.nn.Module):
        def forward(self, hidden, attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs):
            bsz, length, _ = hidden.shape
            x = layer.input_layernorm(hidden)
            cos, sin = position_embeddings  # (B, T, head_dim)
            q = attn.q_proj(x[:, -1:]).view(bsz, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(bsz, length, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(bsz, length, -1, attn.head_dim).transpose(1, 2)
            q, _ = rope(q, q, cos[:, -1:], sin[:, -1:])
            _, k = rope(k, k, cos, sin)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, attn.layer_idx)
            groups = attn.num_key_value_groups
            mask = None if attention_mask is None else attention_mask[:, :, -1:, :]  # the last query's row
            out = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups),
                                                                   attn_mask=mask, scale=attn.scaling)
            hidden = hidden[:, -1:] + attn.o_proj(out.transpose(1, 2).reshape(bsz, 1, -1))
            return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    return LastPosition()
