"""A model's generation_config.json: the ids that end generation and its sampling defaults.

Model authors put the sampling settings their model is meant to run with there (Llama-3-Instruct:
temperature 0.6, top_p 0.9). As vLLM's server does, a request that leaves a sampling field out
gets the model's value instead of the API's neutral default, and `max_new_tokens` bounds a
request that gives no limit. `do_sample` is not read: a request asks for greedy decoding with
temperature 0, whatever the file says.
"""

from __future__ import annotations

from pathlib import Path

from shardserve.errors import ModelLoadError
from shardserve.json_files import read_json_object

# generation_config.json key -> SamplingParams field (the same names here).
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")


def read_generation_config(model_dir: str | Path) -> dict:
    """The file's contents ({} without one); ModelLoadError naming it if it is not a JSON object."""
    path = Path(model_dir) / "generation_config.json"
    return read_json_object(path) if path.exists() else {}


def sampling_defaults(generation_config: dict, model_dir: str | Path) -> dict:
    """The SamplingParams fields that `generation_config` (model_dir's file, as
    read_generation_config returns it) sets, checked (ModelLoadError naming the file and the
    field): a bad value fails the load, not every request that omits the field."""
    from shardserve.engine.sampling_params import SamplingParams

    defaults = {name: generation_config[name] for name in SAMPLING_FIELDS if generation_config.get(name) is not None}
    try:
        SamplingParams(**defaults)
    except ValueError as e:
        raise ModelLoadError(f"{Path(model_dir) / 'generation_config.json'}: {e}") from e
    return defaults
