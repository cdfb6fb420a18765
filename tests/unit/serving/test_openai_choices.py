"""`n` choices per prompt on the OpenAI routes, in process (FastAPI's TestClient) on a tiny Llama:
indexes, seeds, usage, streams, the bounds of n, queue slots, and an error of one choice aborting
the others."""

from __future__ import annotations

import pytest

from helpers.served_app import artifact, post_ok, served, sse_chunks, sse_events
from shardserve.serving import openai_protocol as oa
from shardserve.serving.admission import Admission
from shardserve.serving.chat import chat_prompt_ids

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Tell me a story"}]}
PROMPTS = ["Once upon a time", "The quick brown fox jumps"]
SAMPLED = {"model": "llama", "max_tokens": 6, "temperature": 1.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with served((("llama", artifact(tmp_path_factory.mktemp("choices") / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


@pytest.fixture
def model(client):
    return client.app.state.ctx.store.get("llama")


def _texts(response: dict) -> list[str]:
    return [c["text"] if "text" in c else c["message"]["content"] for c in response["choices"]]


def _prompt_tokens(client, prompt: str) -> int:
    return len(client.app.state.ctx.store.get("llama").engine.tokenizer.encode(prompt))


# -- 1. indexes, echo, usage -----------------------------------------------------------------------

def test_completion_choices_are_indexed_prompt_by_prompt_each_echoing_its_prompt(client):
    body = {**SAMPLED, "prompt": PROMPTS, "n": 2, "seed": 3, "echo": True, "logprobs": 1}
    r = post_ok(client, "/v1/completions", body)
    choices = r["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for k, c in enumerate(choices):  # choice k answers prompt k // n
        prompt = PROMPTS[k // 2]
        assert c["text"].startswith(prompt) and len(c["text"]) > len(prompt)
        p = _prompt_tokens(client, prompt)  # echoed: the prompt's tokens come first
        assert c["finish_reason"] == "length" and len(c["logprobs"]["tokens"]) == p + 6
        assert c["logprobs"]["text_offset"][p] == len(prompt)
    # each prompt counts once, each choice's completion counts
    prompt_tokens = sum(_prompt_tokens(client, p) for p in PROMPTS)
    assert r["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 4 * 6,
                          "total_tokens": prompt_tokens + 24}


def test_chat_choices_are_indexed_with_their_own_logprobs_and_usage(client):
    r = post_ok(client, "/v1/chat/completions", {**CHAT, **SAMPLED, "n": 3, "seed": 5, "logprobs": True,
                                               "top_logprobs": 2})
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    for c in r["choices"]:
        content = c["logprobs"]["content"]
        assert c["finish_reason"] == "length" and len(content) == 6
        assert "".join(e["token"] for e in content) == c["message"]["content"]
        assert all(len(e["top_logprobs"]) == 2 for e in content)
    tokenizer = client.app.state.ctx.store.get("llama").engine.tokenizer
    prompt_tokens = len(chat_prompt_ids(tokenizer, CHAT["messages"]))
    assert r["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 18, "total_tokens": prompt_tokens + 18}


# -- 2. seeds: choice j samples with seed + j ------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", {"prompt": PROMPTS[0]}), ("/v1/chat/completions", CHAT)])
def test_seeded_choices_are_reproducible_and_differ_choice_j_with_seed_plus_j(client, path, body):
    body = {**body, **SAMPLED, "max_tokens": 8}
    texts = _texts(post_ok(client, path, {**body, "n": 3, "seed": 11}))
    assert _texts(post_ok(client, path, {**body, "n": 3, "seed": 11})) == texts
    assert len(set(texts)) == 3, texts
    assert [_texts(post_ok(client, path, {**body, "seed": 11 + j}))[0] for j in range(3)] == texts
    # the seeds wrap around 2^64, as the engine takes seeds (a seed and seed - 2^64 draw alike)
    wrapped = _texts(post_ok(client, path, {**body, "n": 2, "seed": 2**64 - 1}))
    assert wrapped == [_texts(post_ok(client, path, {**body, "seed": -1}))[0], _texts(post_ok(client, path, {**body, "seed": 0}))[0]]


def test_unseeded_choices_sample_independently_and_greedy_ones_are_equal(client):
    body = {**SAMPLED, "prompt": PROMPTS[0], "max_tokens": 8, "n": 4}
    assert len(set(_texts(post_ok(client, "/v1/completions", body)))) > 1
    greedy = _texts(post_ok(client, "/v1/completions", {**body, "temperature": 0.0}))
    assert len(greedy) == 4 and len(set(greedy)) == 1


# -- 3. streams ------------------------------------------------------------------------------------

def _by_choice(chunks: list[dict]) -> dict[int, list[dict]]:
    choices: dict[int, list[dict]] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            choices.setdefault(c["index"], []).append(c)
    return choices


@pytest.mark.parametrize("prompt,n", [(PROMPTS[0], 3), (PROMPTS, 2)])
def test_a_streamed_completion_has_each_choices_text_and_finish_and_one_usage_chunk(client, prompt, n):
    body = {**SAMPLED, "prompt": prompt, "n": n, "seed": 2, "echo": True, "logprobs": 0}
    plain = post_ok(client, "/v1/completions", body)
    chunks = sse_chunks(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    usage = [c for c in chunks if not c["choices"]]
    assert len(usage) == 1 and chunks[-1] is usage[0] and usage[0]["usage"] == plain["usage"]
    assert all(len(c["choices"]) == 1 for c in chunks[:-1])  # a chunk is one choice's
    choices = _by_choice(chunks)
    prompts = 1 if isinstance(prompt, str) else len(prompt)
    assert sorted(choices) == list(range(prompts * n)) and len(plain["choices"]) == prompts * n
    for k, parts in choices.items():
        expected = plain["choices"][k]
        assert "".join(p["text"] for p in parts) == expected["text"]
        assert [p["finish_reason"] for p in parts if p["finish_reason"]] == [expected["finish_reason"]]
        assert [t for p in parts for t in p["logprobs"]["tokens"]] == expected["logprobs"]["tokens"]
        assert [o for p in parts for o in p["logprobs"]["text_offset"]] == expected["logprobs"]["text_offset"]


def test_a_streamed_chat_has_each_choices_role_text_and_finish_and_one_usage_chunk(client):
    body = {**CHAT, **SAMPLED, "n": 2, "seed": 4}
    plain = post_ok(client, "/v1/chat/completions", body)
    chunks = sse_chunks(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert [c for c in chunks if not c["choices"]] == [chunks[-1]] and chunks[-1]["usage"] == plain["usage"]
    choices = _by_choice(chunks[:-1])
    assert sorted(choices) == [0, 1]
    for k, parts in choices.items():
        assert parts[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(p["delta"].get("content", "") for p in parts) == plain["choices"][k]["message"]["content"]
        assert [p["finish_reason"] for p in parts if p["finish_reason"]] == ["length"]
    assert all(c["usage"] is None for c in chunks[:-1])


# -- 4. the bounds of n ----------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", CHAT)])
def test_n_out_of_range_is_a_400_naming_it(client, path, body):
    body = {**body, "model": "llama", "max_tokens": 2}
    for n in (0, -1, oa.MAX_CHOICES + 1):
        r = client.post(path, json={**body, "n": n})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "n" and error["message"].startswith("n:") and str(n) in error["message"]
        assert str(oa.MAX_CHOICES) in error["message"]
    assert len(post_ok(client, path, {**body, "n": None})["choices"]) == 1  # null: the default, 1
    oa.CompletionRequest(prompt="x", n=oa.MAX_CHOICES).check_supported()


# -- 5. queue slots: a choice takes one ------------------------------------------------------------

def test_each_choice_takes_a_queue_slot(client, model, monkeypatch):
    monkeypatch.setattr(model, "admission", Admission(concurrency=1, queue_size=2))  # 3 slots
    body = {**SAMPLED, "max_tokens": 2}
    completion, chat = ("/v1/completions", {**body, "prompt": "x"}), ("/v1/chat/completions", {**CHAT, **body})
    model.admission.inflight = 1  # another request's
    for path, request in (completion, chat):
        r = client.post(path, json={**request, "n": 3})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert len(post_ok(client, path, {**request, "n": 2})["choices"]) == 2
        assert sorted(_by_choice(sse_chunks(client, path, {**request, "n": 2}))) == [0, 1]
        assert model.admission.inflight == 1  # every slot given back
    model.admission.inflight = 0
    # more than the queue ever takes: a 400 naming n (2 prompts x 2 choices, or 4 choices)
    for path, request in ((completion[0], {**completion[1], "prompt": ["a", "b"], "n": 2}), (chat[0], {**chat[1], "n": 4})):
        r = client.post(path, json=request)
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "n" and "4 requests" in error["message"], r.text
    assert model.admission.inflight == 0


# -- 6. an error of one choice aborts every other --------------------------------------------------

@pytest.mark.parametrize(("stream", "fail_at"), [(False, 0), (False, 3), (True, 3)])
@pytest.mark.parametrize(("path", "body"), [("/v1/completions", {"prompt": PROMPTS[0]}), ("/v1/chat/completions", CHAT)])
def test_an_error_of_one_choice_aborts_the_others(client, model, monkeypatch, path, body, stream, fail_at):
    """Failing before its first update, while the others wait for theirs: the answer never starts
    (a 500); at its third: mid-answer (a 500, or the stream's last event)."""
    generate, live = model.engine.generate, set()

    async def failing(prompt, params, request_id, output_kind):
        """The engine's generation, but choice 1's (seed 8) fails at update `fail_at`, or at its
        last if that comes first (an answer's only one: OutputKind.FINAL)."""
        live.add(request_id)
        try:
            updates = 0
            if params.seed == 8 and fail_at == 0:
                raise RuntimeError("injected failure")
            async for out in generate(prompt, params, request_id, output_kind=output_kind):
                updates += 1
                if params.seed == 8 and (updates == fail_at or out.finished):
                    raise RuntimeError("injected failure")
                yield out
        finally:
            live.discard(request_id)

    monkeypatch.setattr(model.engine, "generate", failing)
    body = {**body, **SAMPLED, "max_tokens": 120, "n": 3, "seed": 7}
    if stream:
        events = sse_events(client, path, body)
        assert "injected failure" in events[-1]["error"]["message"]
    else:
        r = client.post(path, json=body)
        assert r.status_code == 500 and "injected failure" in r.text
    assert live == set() and model.engine.inflight == [0]
    assert model.admission.inflight == 0
