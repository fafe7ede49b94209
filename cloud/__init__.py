"""The cloud: LLM candidate generator, item text vectors, gRPC service, micro-batcher, model registry."""
from __future__ import annotations

import logging

# Third-party start-up noise that says nothing about this installation, silenced at its source (the loggers that
# emit it) before any cloud module imports torch or transformers: torchao, which transformers imports, warns at
# every start that its optional CUDA kernels and Triton are absent (CPU serving needs neither), and torch's pytree
# registry warns that torchao registers its enums the deprecated way. Their errors, and every other logger, pass.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
