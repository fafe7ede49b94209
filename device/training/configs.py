"""Where SRM training settings come from: code defaults, then a TOML preset (device/training/presets/NAME.toml
or a file), then `--set` overrides. Kept apart from the CLI so that code and tests build the same configs."""
from __future__ import annotations

from pathlib import Path

from device.training import PRESETS
from device.training.coop import CoopConfig
from device.training.models import MODELS
from device.training.train import TrainConfig
from shared.config import load_config, resolve_preset, to_dict
from shared.errors import ConfigError


def train_configs(model_name: str, preset: str | Path | None = None, overrides: list[str] = (),
                  seed: int | None = None) -> tuple[dict, TrainConfig]:
    """(model config fields without num_items, TrainConfig) from the [model] and [train] tables of `preset`.

    An explicit `preset` (a name under PRESETS or a path) must exist; without one, the model's shipped preset
    PRESETS/<model_name>.toml is used, and a model without one trains on its code defaults. `overrides` are
    `model.KEY=VALUE` / `train.KEY=VALUE`; `seed` (the --seed flag) overrides train.seed.
    """
    config_class = MODELS.get(model_name, field="--model").config_class
    shipped = PRESETS / f"{model_name}.toml"
    path = resolve_preset(PRESETS, preset, "--config") if preset else (shipped if shipped.is_file() else None)
    bad = [o for o in overrides if not o.startswith(("model.", "train."))]
    if bad:
        raise ConfigError(bad[0].partition("=")[0], bad[0], "overrides start with model. or train.")
    model_over = [o[len("model."):] for o in overrides if o.startswith("model.")]
    train_over = [o[len("train."):] for o in overrides if o.startswith("train.")]
    model_config = to_dict(load_config(config_class, path, model_over + ["num_items=1"], section="model"))
    model_config.pop("num_items")  # the dataset's, set when the model is built
    train_config = load_config(TrainConfig, path, train_over + ([f"seed={seed}"] if seed is not None else []),
                               section="train")
    return model_config, train_config


def coop_config(preset: str | Path | None = None, overrides: list[str] = (), seed: int | None = None) -> CoopConfig:
    """CoopConfig from the [coop] table of `preset` (default PRESETS/coop.toml); `overrides` are `coop.KEY=VALUE`
    (others are ignored: they belong to train_configs), `seed` overrides coop.seed."""
    path = resolve_preset(PRESETS, preset or "coop", "--coop-config")
    values = [o[len("coop."):] for o in overrides if o.startswith("coop.")]
    if seed is not None:
        values.append(f"seed={seed}")
    return load_config(CoopConfig, path, values, section="coop")
