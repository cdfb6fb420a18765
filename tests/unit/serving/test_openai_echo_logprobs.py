"""/v1/completions with `echo` and `logprobs`: the prompt's tokens get their logprobs too (the
first none), as evaluation harnesses read them; `max_tokens: 0` with echo scores the prompt
alone. In process (FastAPI's TestClient) on a tiny Llama, against transformers' float32 forward."""

from __future__ import annotations

import pytest
import torch

from helpers.reference_logprobs import hf_logprobs, token_logprobs
from helpers.served_app import artifact, post_ok, served, sse_chunks

PROMPT = [1, 37, 12, 99, 5, 61, 23, 8, 74, 40]  # token ids, as evaluation harnesses send them
TOL = 1e-4


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with served((("llama", artifact(tmp_path_factory.mktemp("echo") / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> torch.Tensor:
    """transformers' float32 log_softmax [len(PROMPT), vocab] of the prompt."""
    return hf_logprobs(tiny_checkpoint("llama"), PROMPT)


def _post(client, body: dict) -> dict:
    return post_ok(client, "/v1/completions", {"model": "llama", "prompt": PROMPT, "temperature": 0, **body})


def _decode(client, ids: list[int]) -> list[str]:
    tokenizer = client.app.state.ctx.store.get("llama").engine.tokenizer
    return [tokenizer.decode([t]) for t in ids]


def test_echo_with_logprobs_scores_every_prompt_token_then_the_completion(client, reference):
    body = _post(client, {"echo": True, "logprobs": 2, "max_tokens": 3, "ignore_eos": True})
    choice = body["choices"][0]
    lp = choice["logprobs"]
    plain = _post(client, {"logprobs": 2, "max_tokens": 3, "ignore_eos": True})["choices"][0]
    assert choice["text"].endswith(plain["text"]) and len(choice["text"]) > len(plain["text"])
    n = len(PROMPT)
    assert lp["tokens"][:n] == _decode(client, PROMPT) and lp["tokens"][n:] == plain["logprobs"]["tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    want = token_logprobs(reference, PROMPT)
    assert lp["token_logprobs"][1:n] == pytest.approx(want, abs=TOL)
    assert lp["token_logprobs"][n:] == plain["logprobs"]["token_logprobs"]
    for i in range(1, n):  # the token itself first, then the two most likely (keyed by text)
        top = reference[i - 1].topk(2)
        expected = {lp["tokens"][i]: want[i - 1]}
        for text, value in zip(_decode(client, top.indices.tolist()), top.values.tolist(), strict=True):
            expected.setdefault(text, value)
        assert list(lp["top_logprobs"][i]) == list(expected)
        assert list(lp["top_logprobs"][i].values()) == pytest.approx(list(expected.values()), abs=TOL)
    offsets = lp["text_offset"]
    assert offsets[:n] == sorted(offsets[:n]) and offsets[n] == len(choice["text"]) - len(plain["text"])
    assert body["usage"]["completion_tokens"] == 3


def test_max_tokens_0_with_echo_scores_the_prompt_alone(client, reference):
    body = _post(client, {"echo": True, "logprobs": 0, "max_tokens": 0})
    choice = body["choices"][0]
    tokenizer = client.app.state.ctx.store.get("llama").engine.tokenizer
    assert choice["text"] == tokenizer.decode(PROMPT) and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == _decode(client, PROMPT)
    want = token_logprobs(reference, PROMPT)
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(want, abs=TOL)
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 0, "total_tokens": len(PROMPT)}
    r = _post_raw(client, {"max_tokens": 0})  # without echo there is nothing to answer
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def _post_raw(client, body: dict):
    return client.post("/v1/completions", json={"model": "llama", "prompt": PROMPT, **body})


@pytest.mark.parametrize("max_tokens", [0, 4])
def test_a_streamed_echo_carries_the_prompt_logprobs_in_its_first_chunk(client, max_tokens):
    body = {"echo": True, "logprobs": 1, "max_tokens": max_tokens, "ignore_eos": True}
    whole = _post(client, body)["choices"][0]
    events = sse_chunks(client, "/v1/completions", {"model": "llama", "prompt": PROMPT, "temperature": 0, **body,
                                                    "stream_options": {"include_usage": True}})
    chunks = [e["choices"][0] for e in events if e["choices"]]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert chunks[0]["logprobs"]["tokens"][: len(PROMPT)] == _decode(client, PROMPT)
    for key in ("tokens", "token_logprobs", "text_offset"):
        assert [v for c in chunks for v in c["logprobs"][key]] == whole["logprobs"][key], key
    assert events[-1]["usage"]["completion_tokens"] == max_tokens


@pytest.mark.parametrize("prompt", ["Once upon a time, naïve", "<s>literal text", "ids"])
def test_each_prompt_token_is_found_at_its_offset_in_the_echoed_text(client, prompt):
    """Text is echoed as given (the BOS the tokenizer adds is not in it); token ids as decoded,
    special tokens included. A token of half a character has no text of its own."""
    tokenizer = client.app.state.ctx.store.get("llama").engine.tokenizer
    if prompt == "ids":
        prompt = tokenizer.encode("Once upon a time, naïve")
        assert prompt[0] == tokenizer.bos_token_id
    choice = _post(client, {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 0})["choices"][0]
    text, lp = choice["text"], choice["logprobs"]
    assert lp["text_offset"] == sorted(lp["text_offset"])
    tokens, offsets = lp["tokens"], lp["text_offset"]
    if isinstance(prompt, str):  # the added BOS: at the start, with no text in the echo
        assert tokens[0] == tokenizer.bos_token and offsets[0] == 0
        tokens, offsets = tokens[1:], offsets[1:]
    halves = [t for t in tokens if "\ufffd" in t]
    assert len(halves) == 2 * text.count("ï")  # two byte tokens each
    for token, offset in zip(tokens, offsets, strict=True):
        if token not in halves:
            assert text[offset:].startswith(token), (token, offset, text)


def test_a_prompt_scored_alone_gets_400s_in_the_request_terms(client):
    limit = client.app.state.ctx.store.get("llama").engine.max_model_len
    r = _post_raw(client, {"prompt": [5] * limit, "echo": True, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert f"at most max_model_len - 1 = {limit - 1} tokens, got {limit}" in r.json()["error"]["message"]
    _post(client, {"prompt": [5] * (limit - 1), "echo": True, "max_tokens": 0})  # the most
    r = _post_raw(client, {"echo": True, "max_tokens": 0, "min_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_tokens"


def test_each_prompt_is_scored_once_and_its_choices_echo_that(client, monkeypatch):
    from shardserve.serving import routes_openai

    asked = []
    respond = routes_openai.respond

    async def recording(request, model, prompts, params, **kw):
        asked.extend(p.prompt_logprobs for p in params)
        return await respond(request, model, prompts, params, **kw)

    monkeypatch.setattr(routes_openai, "respond", recording)
    body = _post(client, {"prompt": [PROMPT, PROMPT[:6]], "n": 2, "echo": True, "logprobs": 1, "max_tokens": 2,
                          "temperature": 1.0, "seed": 3})
    assert asked == [1, None, 1, None]  # the first choice of each prompt scores it
    lp = [c["logprobs"] for c in body["choices"]]
    for k, prompt in ((0, PROMPT), (2, PROMPT[:6])):
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert lp[k][key][: len(prompt)] == lp[k + 1][key][: len(prompt)], key
        assert lp[k]["token_logprobs"][0] is None and len(lp[k + 1]["tokens"]) == len(prompt) + 2
