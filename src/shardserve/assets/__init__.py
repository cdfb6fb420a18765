"""Files shipped inside the shardserve package.

`default-model/` holds a tiny Llama (3.5 M parameters, bfloat16, ~7 MB) trained on four Jane
Austen novels by tools/default_model/train.py. It lets `shardserve generate` run with no download
and no GPU. It is a toy for smoke tests and demos, not a useful model: see its MODEL_CARD.md.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_DIRNAME = "default-model"

__all__ = ["DEFAULT_MODEL_DIRNAME", "default_model_path"]


def default_model_path() -> Path:
    """Directory of the built-in default model (a Hugging Face-style checkpoint).

    It holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
    generation_config.json and MODEL_CARD.md, and loads offline with
    `AutoModelForCausalLM.from_pretrained(path)` / `AutoTokenizer.from_pretrained(path)`.
    Works from a source checkout and from an installed wheel (package data `assets/**/*`).
    Raises FileNotFoundError if the files are missing (e.g. a build without package data).
    """
    try:
        root = resources.files(__name__)
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual import setups
        root = None
    if isinstance(root, Path):
        path = root / DEFAULT_MODEL_DIRNAME
    else:
        # Not a plain directory on disk (e.g. a zip import): fall back to this file's folder.
        path = Path(__file__).resolve().parent / DEFAULT_MODEL_DIRNAME
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"built-in default model not found at {path}; reinstall shardserve with its package "
            "data, or rebuild it with tools/default_model/train.py"
        )
    return path
