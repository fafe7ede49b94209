"""Cloud LLM candidate generator: item tokenizer, causal LM, training, constrained beam search."""
from __future__ import annotations

from cloud.llm.store import load_generator  # torch is imported when a model loads, not here

__all__ = ["load_generator"]
