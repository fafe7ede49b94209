"""Cloud LLM candidate generator: item tokenizer, causal LM, training, constrained beam search."""
from __future__ import annotations


def load_generator(folder, dataset_or_catalog, **kwargs):
    """An LLMGenerator for a trained folder (see cloud.llm.store.load_generator); imports torch lazily."""
    from cloud.llm.store import load_generator as _load

    return _load(folder, dataset_or_catalog, **kwargs)
