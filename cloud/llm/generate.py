"""LLMGenerator: batched trie-constrained beam search over item codes, reusing the KV cache."""
from __future__ import annotations

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
                 beam_width: int = 0, batch_size: int = 64):
        self.model = model.eval()
        self.index = index
        self.max_history = int(max_history)
        self.beam_width = int(beam_width)
        self.batch_size = int(batch_size)
        self._version = version
        import torch

        self._child = [torch.from_numpy(c) for c in index.child]  # level l: (nodes_l, K_l)
        self._leaves = [torch.from_numpy(c) for c in index.leaves]  # level l: (nodes_l,)

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
        return [[Candidate(int(i), float(s)) for i, s in zip(row_i, row_s)] for row_i, row_s in zip(items, scores)]

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
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1)
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
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
                logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B * W', V)
                cache = out.past_key_values
        raise AssertionError("unreachable: the last level returns")

    def _width(self, cand, avail, n: int) -> int:
        """Beams to keep: max(n, beam_width), widened until every row's kept prefixes hold n unblocked items."""
        import torch

        keep = min(max(n, self.beam_width), cand.shape[1])
        order = cand.argsort(dim=1, descending=True)
        covered = torch.gather(avail, 1, order).cumsum(1)  # (B, W*K)
        need = int((covered < n).sum(1).max()) + 1  # smallest prefix of the order reaching n, worst row
        return min(max(keep, need), cand.shape[1])
