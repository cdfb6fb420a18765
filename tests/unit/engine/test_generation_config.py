"""A model's generation_config.json (engine/generation_config.py): sampling defaults and EOS ids."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from shardserve.engine.generation_config import sampling_defaults
from shardserve.engine.tokenizer import eos_token_ids
from shardserve.errors import ModelLoadError


def _write(tmp_path, content) -> None:
    (tmp_path / "generation_config.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_sampling_fields_are_read_and_the_rest_left(tmp_path):
    assert sampling_defaults(tmp_path) == {}  # no file
    _write(tmp_path, {"do_sample": False, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
                      "max_new_tokens": 64, "eos_token_id": [7, 9], "min_p": None})
    assert sampling_defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
                                           "max_new_tokens": 64}


@pytest.mark.parametrize("content,message", [
    ("{not json", "not a valid JSON file"),
    ("[1, 2]", "expected a JSON object, got list"),
    ({"temperature": -1}, "temperature must be a number in [0, 100]"),
    ({"top_p": "high"}, "top_p must be"),
])
def test_a_bad_file_fails_the_load_naming_it(tmp_path, content, message):
    _write(tmp_path, content)
    with pytest.raises(ModelLoadError) as e:
        sampling_defaults(tmp_path)
    assert "generation_config.json" in str(e.value) and message in str(e.value)


def test_eos_ids_come_from_the_config_the_tokenizer_and_the_file(tmp_path):
    _write(tmp_path, {"eos_token_id": [7, 9]})
    ids = eos_token_ids(str(tmp_path), SimpleNamespace(eos_token_id=3), SimpleNamespace(eos_token_id=9))
    assert ids == (3, 7, 9)
    _write(tmp_path, "{")
    with pytest.raises(ModelLoadError, match="generation_config.json: not a valid JSON file"):
        eos_token_ids(str(tmp_path), SimpleNamespace(eos_token_id=3), SimpleNamespace(eos_token_id=None))


def test_the_engine_decodes_with_the_model_values_when_given_no_params(tiny_checkpoint, tmp_path):
    import shutil

    from shardserve import LLM, SamplingParams

    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), path)
    _write(path, {"temperature": 0.0, "top_k": 7})
    with LLM(str(path), dtype="fp32") as llm:
        assert llm.default_sampling_params() == SamplingParams(temperature=0.0, top_k=7)
        greedy = llm.generate("the cat", SamplingParams(temperature=0.0))[0].token_ids
        assert [llm.generate("the cat")[0].token_ids for _ in range(2)] == [greedy, greedy]
        assert next(iter(llm.stream("the cat"))).token_ids == greedy[:1]
