"""Causal-LM presets over item tokens: `compact`/`compact-text` (from scratch), `smollm2-135m` (pretrained blocks), a folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.text.encoders import smollm2_folder
from shared.config import check
from shared.errors import ConfigError

PRESETS = ("compact", "compact-text", "tiny", "smollm2-135m", "folder")
SCRATCH = ("compact", "compact-text", "tiny")  # built from a config; the others load pretrained blocks
GROUNDINGS = ("id", "text")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the cloud LM (only architecture fields; training lives in TrainConfig)."""

    preset: str = "compact"  # compact | compact-text | tiny | smollm2-135m | folder (then `folder` is a local HF causal LM)
    arch: str = "llama"  # llama | qwen2 | gpt2 (compact/tiny only)
    hidden: int = 64  # from-scratch presets only (a pretrained model keeps its own width)
    layers: int = 2  # from scratch: the depth; pretrained: the first `layers` blocks are kept (the rest dropped)
    heads: int = 2
    intermediate: int = 256
    attention_dropout: float = 0.2
    max_history: int = 50  # items kept from a history (oldest dropped)
    folder: str = ""  # preset = folder: local HF causal-LM folder to warm start from
    # id: one learned embedding per item token; text: proj(item text vector) + id residual (needs item vectors)
    grounding: str = "id"
    # text grounding, at serving: log-probability bonus of the items with no training interaction (their text-only
    # logits have less contrast than a trained item's). Chosen on the validation world: 2.0 lifted cold recall@50
    # from 0 to 0.25 for -0.006 warm NDCG@10 (docs/results.md)
    cold_boost: float = 2.0

    def __post_init__(self):
        check(self.preset in PRESETS, "model.preset", self.preset, f"must be one of {', '.join(PRESETS)}")
        check(self.arch in ("llama", "qwen2", "gpt2"), "model.arch", self.arch, "must be llama, qwen2 or gpt2")
        check(self.hidden > 0 and self.hidden % self.heads == 0, "model.hidden", self.hidden,
              f"must be positive and divisible by heads ({self.heads})")
        check(self.layers >= 1, "model.layers", self.layers, "must be at least 1")
        check(self.max_history >= 1, "model.max_history", self.max_history, "must be at least 1")
        check(0.0 <= self.attention_dropout < 1.0, "model.attention_dropout", self.attention_dropout, "must be in [0, 1)")
        check(self.preset != "folder" or bool(self.folder), "model.folder", self.folder, "needed by preset folder")
        check(self.grounding in GROUNDINGS, "model.grounding", self.grounding, f"must be one of {', '.join(GROUNDINGS)}")
        check(self.cold_boost >= 0, "model.cold_boost", self.cold_boost, "must be 0 or more")


def scratch_config(config: ModelConfig, vocab_size: int, depth: int):
    """A transformers config for a from-scratch model whose vocabulary is the item tokens."""
    positions = 1 + depth * (config.max_history + 1) + 8
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    if config.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=config.hidden, n_layer=config.layers, n_head=config.heads,
                          n_inner=config.intermediate, n_positions=positions, resid_pdrop=config.attention_dropout,
                          embd_pdrop=config.attention_dropout, attn_pdrop=config.attention_dropout, **common)
    if config.arch == "qwen2":
        from transformers import Qwen2Config as Cfg
    else:
        from transformers import LlamaConfig as Cfg
    return Cfg(hidden_size=config.hidden, num_hidden_layers=config.layers, num_attention_heads=config.heads,
               num_key_value_heads=config.heads, intermediate_size=config.intermediate,
               max_position_embeddings=positions, attention_dropout=config.attention_dropout, **common)


def build_model(config: ModelConfig, vocab_size: int, depth: int, seed: int = 0):
    """A causal LM with `vocab_size` item tokens; pretrained presets keep their first `layers` blocks, get a new vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if config.preset in SCRATCH:
        return AutoModelForCausalLM.from_config(scratch_config(config, vocab_size, depth))
    folder = smollm2_folder() if config.preset == "smollm2-135m" else Path(config.folder)
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError("model.folder", str(folder), "not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return replace_vocabulary(truncate(model, config.layers), vocab_size)


def truncate(model, layers: int):
    """Keep the first `layers` decoder blocks (all when the model has no more): what fits 2 CPU cores."""
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if blocks is None or layers >= len(blocks):
        return model
    model.model.layers = blocks[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    return model


def replace_vocabulary(model, vocab_size: int):
    """Swap the token embedding (and head) for a freshly initialised item-token vocabulary.

    The pretrained blocks are the warm start; word tokens mean nothing to item codes, so their
    rows are re-initialised rather than reused.
    """
    import torch

    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    emb = model.get_input_embeddings()
    torch.nn.init.normal_(emb.weight, std=model.config.initializer_range if hasattr(model.config, "initializer_range") else 0.02)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 0, 1, 2
    if model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
        torch.nn.init.normal_(model.get_output_embeddings().weight, std=0.02)
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
