"""A model's generation_config.json (engine/generation_config.py): sampling defaults and EOS ids."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.checkpoints import copy_checkpoint
from shardserve.engine.generation_config import read_generation_config, sampling_defaults
from shardserve.engine.tokenizer import eos_token_ids
from shardserve.errors import ModelLoadError


def _write(tmp_path, content) -> None:
    (tmp_path / "generation_config.json").write_text(content if isinstance(content, str) else json.dumps(content))


def _defaults(model_dir) -> dict:
    return sampling_defaults(read_generation_config(model_dir), model_dir)


def test_sampling_fields_are_read_and_the_rest_left(tmp_path):
    assert read_generation_config(tmp_path) == {} and _defaults(tmp_path) == {}  # no file
    _write(tmp_path, {"do_sample": False, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
                      "max_new_tokens": 64, "eos_token_id": [7, 9], "min_p": None})
    assert _defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
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
        _defaults(tmp_path)
    assert "generation_config.json" in str(e.value) and message in str(e.value)


def test_eos_ids_come_from_the_config_the_tokenizer_and_the_file(tmp_path):
    _write(tmp_path, {"eos_token_id": [7, 9]})
    ids = eos_token_ids(str(tmp_path), SimpleNamespace(eos_token_id=3), SimpleNamespace(eos_token_id=9))
    assert ids == (3, 7, 9)
    # the file's contents as the caller read them: the file is not read again
    assert eos_token_ids("/nowhere", SimpleNamespace(eos_token_id=3), SimpleNamespace(eos_token_id=9),
                         {"eos_token_id": 4}) == (3, 4, 9)
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


@pytest.fixture
def file_reads(monkeypatch) -> list[Path]:
    """Every read of a generation_config.json through pathlib (how read_json_object reads it)."""
    reads, read_text = [], Path.read_text

    def counted(self, *args, **kwargs):
        if self.name == "generation_config.json":
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    return reads


def _model(tiny_checkpoint, tmp_path) -> Path:
    path = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "model")
    _write(path, {"temperature": 0.0, "eos_token_id": [2, 7]})
    return path


def test_the_engine_reads_the_file_once_for_its_defaults_and_eos_ids(tiny_checkpoint, tmp_path, file_reads):
    from shardserve import LLM

    with LLM(str(_model(tiny_checkpoint, tmp_path)), dtype="fp32") as llm:
        assert len(file_reads) == 1
        assert llm.sampling_defaults == {"temperature": 0.0} and llm.scheduler.eos_token_ids == (2, 7)


def test_the_cli_reads_it_once_and_its_engine_once(tiny_checkpoint, tmp_path, file_reads, capsys):
    """The CLI's own read checks the flags with the model's values before the model loads."""
    from shardserve.cli import main

    path = str(_model(tiny_checkpoint, tmp_path))
    assert main(["generate", "--model", path, "--prompt", "x", "--max-new-tokens", "1", "--no-stream"]) == 0
    assert len(file_reads) == 2


def test_the_server_load_reads_it_once_and_its_engine_once(tiny_checkpoint, tmp_path, file_reads):
    """The loader's own read fails a bad file before any engine starts, for either engine."""
    from shardserve.serving.model_store import ModelStore

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    model_id = _model(tiny_checkpoint, tmp_path)
    (artifact / "serving.properties").write_text(f"option.model_id={model_id}\noption.dtype=fp32\n")
    store = ModelStore(environ={})
    try:
        model = store.add("m", str(artifact), wait=True)
        assert model.ready, model.error
        assert len(file_reads) == 2  # one engine copy on the CPU
        assert model.sampling_defaults == {"temperature": 0.0} and model.eos_ids == {2, 7}
    finally:
        store.shutdown()
