"""'popularity': the most popular unseen items, counted over what the generator may learn from (numpy only)."""
from __future__ import annotations

from shared.errors import ConfigError
from shared.generator import GENERATORS, PopularityGenerator


@GENERATORS.register("popularity")
def load_popularity(arg: str, dataset, seen=None, threads: int = 0) -> PopularityGenerator:
    """Counts over `seen` (default: every sequence of `dataset`)."""
    if arg:
        raise ConfigError("generator", f"popularity:{arg}", "popularity takes no argument")
    return PopularityGenerator.from_sequences(dataset.sequences() if seen is None else seen, dataset.num_items)
