"""Sampling fields a request leaves out take the model's generation_config.json values
(engine/generation_config.py), on every route; a bad file fails the model's load, naming it."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.served_app import djl_token_ids, served
from shardserve.serving.model_store import ModelStore


def _artifact(tmp_path, checkpoint, generation_config: dict):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    (model / "generation_config.json").write_text(json.dumps(generation_config))
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "serving.properties").write_text(f"option.model_id={model}\noption.dtype=fp32\n")
    return artifact


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    """The model's own setting is greedy (temperature 0), where the APIs' default samples, and
    stops at 9 tokens where a request gives no limit."""
    artifact = _artifact(tmp_path_factory.mktemp("gen-defaults"), tiny_checkpoint("llama"),
                         {"temperature": 0.0, "max_new_tokens": 9})
    with served((("m", str(artifact)),)) as c:
        yield c


def test_djl_sampling_without_a_temperature_takes_the_model_one(client):
    greedy = djl_token_ids(client, "m", {"do_sample": False})
    assert djl_token_ids(client, "m", {"do_sample": True, "seed": 4}) == greedy
    assert djl_token_ids(client, "m", {"do_sample": True, "seed": 4, "temperature": 3.0}) != greedy  # given: it wins


def _openai_text(client, route: str, body: dict) -> str:
    body = {"model": "m", "max_tokens": 12, "ignore_eos": True, **body}
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


@pytest.mark.parametrize("route,prompt", [
    ("/v1/completions", {"prompt": "a long story"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a long story"}]}),
])
def test_openai_without_a_temperature_takes_the_model_one(client, route, prompt):
    greedy = _openai_text(client, route, {**prompt, "temperature": 0})
    assert _openai_text(client, route, {**prompt, "seed": 4}) == greedy
    assert _openai_text(client, route, {**prompt, "seed": 4, "temperature": 3.0}) != greedy  # given: it wins
    r = client.post(route, json={"model": "m", **prompt, "min_p": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_p"


def test_a_request_without_a_limit_stops_at_the_model_max_new_tokens(client):
    djl = client.post("/predictions/m", json={"inputs": "a long story", "parameters": {"ignore_eos": True,
                                                                                     "details": True}})
    assert djl.status_code == 200 and djl.json()["details"]["generated_tokens"] == 9
    chat = client.post("/v1/chat/completions", json={"model": "m", "ignore_eos": True,
                                                     "messages": [{"role": "user", "content": "a long story"}]})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 9
    body = {"model": "m", "prompt": "a long story", "ignore_eos": True}
    null = client.post("/v1/completions", json={**body, "max_tokens": None}).json()
    assert null["usage"]["completion_tokens"] == 9
    omitted = client.post("/v1/completions", json=body).json()  # OpenAI's own default for completions
    assert omitted["usage"]["completion_tokens"] == 16
    given = client.post("/v1/chat/completions", json={"model": "m", "ignore_eos": True, "max_tokens": 11,
                                                      "messages": [{"role": "user", "content": "a long story"}]})
    assert given.json()["usage"]["completion_tokens"] == 11  # a limit given wins


def test_a_bad_generation_config_fails_the_load_naming_the_file(tiny_checkpoint, tmp_path, monkeypatch):
    """Before the weights load: a bad file costs no load time."""
    from shardserve.serving import model_loader

    loads = []
    monkeypatch.setattr(model_loader, "_load_engine", lambda *a: loads.append(a))
    artifact = _artifact(tmp_path, tiny_checkpoint("llama"), {"top_k": "many"})
    model = ModelStore(environ={}).add("m", str(artifact), wait=True)
    assert not model.ready and loads == []
    assert "generation_config.json: top_k must be" in model.error
