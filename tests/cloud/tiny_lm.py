"""A tiny random-weight causal LM folder with its own word-level tokenizer: a local "pretrained" model, no download."""
from __future__ import annotations

from pathlib import Path


def tiny_lm_folder(out: Path, texts: list[str], hidden: int = 32, layers: int = 3, seed: int = 0) -> Path:
    """Write a Llama-architecture causal LM (random weights) and a tokenizer over the words of `texts` to `out`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.replace('"', ' " ').replace(":", " : ").split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="[EOS]")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=2, bos_token_id=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
