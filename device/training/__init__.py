"""Training the small recommendation models (torch): models, the training loop, export, offline evaluation.

Layers, each importing only those above it:

    models/      the SRM architectures, one file each, registered in models.MODELS (+ presets/NAME.toml)
    artifacts    the checkpoint (srm.pt) and the score functions of exported ONNX / ExecuTorch files
    evaluate     protocol A figures of an eager model or an exported artifact
    export       checkpoint -> ONNX (fp32, int8) / ExecuTorch folders with verified manifests
    train        the one training loop (`fit`), its losses and data; independent training
    coop         cooperative training on a generator's candidate lists (a configuration of `fit`)
    finetune     adaptive re-training on fresh events (a configuration of `fit`)
    configs      presets + overrides -> model / training / cooperative configs
    commands     the `train srm`, `eval srm`, `export srm` handlers; cli registers their parsers
"""
from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "presets"  # NAME.toml per model (and coop.toml), shipped as package data
