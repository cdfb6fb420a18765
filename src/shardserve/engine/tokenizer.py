"""Tokenizer from the model directory (offline), and incremental detokenisation."""

from __future__ import annotations

from pathlib import Path

from shardserve.engine.generation_config import read_generation_config
from shardserve.errors import ModelLoadError
from shardserve.hf_imports import TRANSFORMERS_IMPORT


def load_tokenizer(model_dir: str):
    """A transformers tokenizer from `model_dir` only: never a hub download."""
    with TRANSFORMERS_IMPORT:
        from transformers import AutoTokenizer

    path = Path(model_dir)
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise ModelLoadError(f"no tokenizer in {path}: expected tokenizer.json or tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types for broken files
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {e}") from e


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids, never cutting a UTF-8 character in half.

    Decodes a short window (a few tokens of context + the new ones) instead of the whole text:
    the context keeps tokenizers that merge spaces or bytes across tokens right, and a window
    ending in U+FFFD (an incomplete byte sequence) is held back until its next token arrives.
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_token_ids[-6:])
        self.prefix_offset = max(len(self.ids) - 5, 0)
        self.read_offset = len(self.ids)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip_special_tokens)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip_special_tokens)
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        delta = full[len(prefix) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return delta


def eos_token_ids(model_dir: str, model_config, tokenizer, generation_config: dict | None = None) -> tuple[int, ...]:
    """Every id that ends generation: config.json, generation_config.json and the tokenizer's.

    Llama-3-style checkpoints list several (end of text, end of turn) in generation_config.json.
    generation_config: that file's contents where the caller has read them (the engine and the
    server's loader take their sampling defaults from the same read); else (the Accelerate
    engine) it is read here.
    """
    if generation_config is None:
        generation_config = read_generation_config(model_dir)
    ids: list = []
    from_file = generation_config.get("eos_token_id")
    for value in (getattr(model_config, "eos_token_id", None), tokenizer.eos_token_id, from_file):
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return tuple(sorted({int(i) for i in ids if i is not None}))
