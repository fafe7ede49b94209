"""Training the small recommendation models (torch): models, the training loop, export, offline evaluation."""
from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "presets"  # NAME.toml per model (and coop.toml), shipped as package data
