"""Code every side shares: records, datasets and splits, metrics, config, errors, wire stubs."""
