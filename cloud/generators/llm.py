"""'llm:FOLDER': the trained cloud LLM (a `lsc4rec train llm` output folder); torch is imported when it loads."""
from __future__ import annotations

from cloud.llm.store import load_generator
from shared.errors import ConfigError
from shared.generator import GENERATORS


@GENERATORS.register("llm")
def load_llm(arg: str, dataset, seen=None, threads: int = 0):
    """The folder's LLMGenerator; its item index must be for `dataset`'s catalogue (`seen` is not used: it is trained)."""
    if not arg:
        raise ConfigError("generator", "llm", "needs the trained folder: llm:FOLDER")
    return load_generator(arg, dataset, threads=threads or None)
