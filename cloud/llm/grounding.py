"""Text-grounded item tokens: an item's embedding is a learned projection of its text vector plus a learned id residual.

Input embeddings and output scores share the table, so an item no training sequence holds still gets a
logit from its text alone: its residual is held at zero, and in training it is no negative either (both would
only teach "never seen, push down"). Its logit is then lower-contrast than a warm item's (the residual carries
what interactions taught), which the generator's `cold_boost` compensates for at serving time.
After training the table is written into the causal LM's own (tied) token embedding, so serving runs the
plain transformers model; the projection and the text vectors are saved beside it for items added later.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cloud.llm.semantic_ids import NUM_SPECIAL
from cloud.llm.store import GROUNDING_NAME
from shared.data.cold import item_counts


class TextGrounding(torch.nn.Module):
    """(V, H) token table: rows of items = text (N, d) @ proj (d, H) + residual * trained; specials = residual."""

    def __init__(self, vectors: np.ndarray, hidden: int, trained: np.ndarray, init_std: float = 0.02):
        super().__init__()
        n, d = vectors.shape
        text = torch.zeros(NUM_SPECIAL + n, d)
        text[NUM_SPECIAL:] = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
        keep = torch.ones(NUM_SPECIAL + n, 1)
        keep[NUM_SPECIAL:, 0] = torch.from_numpy(np.asarray(trained, dtype=bool)).float()
        self.register_buffer("text", text)  # (V, d) 0 for the special tokens
        self.register_buffer("keep", keep)  # (V, 1) 0 where the item has no training interaction
        self.proj = torch.nn.Linear(d, hidden, bias=False)
        self.residual = torch.nn.Embedding(NUM_SPECIAL + n, hidden)
        torch.nn.init.normal_(self.proj.weight, std=init_std)
        torch.nn.init.normal_(self.residual.weight, std=init_std)

    def forward(self) -> torch.Tensor:
        return self.proj(self.text) + self.residual.weight * self.keep  # (V, H)

    def untrained_bias(self) -> torch.Tensor:
        """(V,) 0, or -inf for items no training sequence holds: in training they are no negatives either (nothing
        says they are bad), so their text does not learn to push them down."""
        return torch.where(self.keep[:, 0] > 0, 0.0, float("-inf"))

    def write_into(self, model) -> None:
        """Copy the table into the model's token embedding (and its output head when that is not tied)."""
        with torch.no_grad():
            table = self.eval()()
            model.get_input_embeddings().weight.copy_(table)
            head = model.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                head.weight.copy_(table)

    def save(self, folder: str | Path, meta: dict, whitening: dict[str, np.ndarray] | None = None) -> Path:
        """`folder/item_text.npz`: the text vectors, the projection (d, H), which items were trained and, when the
        vectors were whitened, the whitening (`mean`, `whitening`): an item added later is embedded by the same
        encoder and whitened the same way, or its vector would not be in the space the projection learned."""
        return save_grounding(folder, self.text[NUM_SPECIAL:].numpy(), self.proj.weight.detach().T.numpy(),
                              self.keep[NUM_SPECIAL:, 0].numpy().astype(bool), meta, whitening)


def save_grounding(folder: str | Path, vectors: np.ndarray, proj: np.ndarray, trained: np.ndarray, meta: dict,
                   whitening: dict[str, np.ndarray] | None = None) -> Path:
    """Write `folder/item_text.npz` (see TextGrounding.save); also used when a catalogue grows."""
    path = Path(folder) / GROUNDING_NAME
    np.savez(path, vectors=np.asarray(vectors, dtype=np.float32), proj=np.asarray(proj, dtype=np.float32),
             trained=np.asarray(trained, dtype=bool), meta=np.asarray(json.dumps(meta)), **(whitening or {}))
    return path


def trained_items(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(N,) bool: item i - 1 appears in at least one training sequence."""
    return item_counts(sequences, num_items)[1:] > 0
