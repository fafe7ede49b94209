"""On-device small recommendation models (SRMs): SASRec, GRU4Rec, DIN, one file each."""
from __future__ import annotations


def build_model(name: str, config: dict):
    """Build a model from its name and a dict of its config fields (as stored in a checkpoint)."""
    from shared.config import from_dict
    from shared.errors import ConfigError
    from device.training.models.common import registry

    models = registry()
    if name not in models:
        raise ConfigError("model", name, f"must be one of {', '.join(sorted(models))}")
    cls, config_cls = models[name]
    return cls(from_dict(config_cls, dict(config)))


MODEL_NAMES = ("sasrec", "gru4rec", "din")
