"""On-device small recommendation models (SRMs), one file each in this package.

Adding an SRM is one new file here whose model class registers itself, with its config dataclass as the
class attribute `config_class`:

    @MODELS.register("mymodel")
    class MyModel(SequentialRecommender):
        config_class = MyModelConfig

(plus, where it has settings worth shipping, `device/training/presets/mymodel.toml`). This module stays
torch-free, so the `lsc4rec` parser can name the registered models without importing them until asked.
"""
from __future__ import annotations

from shared.config import from_dict
from shared.errors import ConfigError
from shared.registry import Registry

MODELS: Registry[type] = Registry("model", "device.training.models")  # name -> SequentialRecommender subclass


def build_model(name: str, config: dict):
    """Build a model from its registered name and a dict of its config fields (as stored in a checkpoint)."""
    if name not in MODELS:
        raise ConfigError("model", name, f"unknown model (known: {', '.join(MODELS.names())})")
    cls = MODELS.get(name)
    return cls(from_dict(cls.config_class, dict(config)))
