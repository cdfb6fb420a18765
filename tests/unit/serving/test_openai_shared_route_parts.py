"""The OpenAI routes' shared pieces, in process (FastAPI's TestClient) on a tiny Llama: the
SamplingParams of several prompts built once, the queue's 400 in one wording for prompts and n,
the streamed choices' usage (ChoiceStreams) equal to the answers', and the generated tokens
counted once (RequestTimer) for the metrics."""

from __future__ import annotations

import pytest

from helpers.served_app import artifact, post_ok, served, sse_chunks
from shardserve.engine.request import RequestOutput
from shardserve.serving import openai_protocol as oa
from shardserve.serving.admission import Admission
from shardserve.serving.http_errors import APIError

PROMPTS = ["Once upon a time", "The quick brown fox jumps", "Hi"]
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Tell me a story"}]}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with served((("llama", artifact(tmp_path_factory.mktemp("shared-parts") / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


@pytest.mark.parametrize(("max_tokens", "builds"), [(3, 1), (None, len(PROMPTS))])
def test_the_prompts_params_are_built_once_unless_max_tokens_null_sets_each_its_own(
        client, monkeypatch, max_tokens, builds):
    built = []
    sampling_params = oa.CompletionRequest.sampling_params

    def counting(self, max_tokens, *args, **kwargs):
        built.append(max_tokens)
        return sampling_params(self, max_tokens, *args, **kwargs)

    monkeypatch.setattr(oa.CompletionRequest, "sampling_params", counting)
    body = post_ok(client, "/v1/completions", {"model": "llama", "prompt": PROMPTS, "n": 2, "max_tokens": max_tokens,
                                               "temperature": 1.0, "seed": 5, "echo": True, "logprobs": 0})
    assert len(built) == builds and len(set(built)) == builds  # the prompts' lengths differ
    assert [c["index"] for c in body["choices"]] == list(range(2 * len(PROMPTS)))
    for k, choice in enumerate(body["choices"]):  # choice k: prompt k // 2's, echoed and scored
        assert choice["text"].startswith(PROMPTS[k // 2]) and choice["logprobs"]["token_logprobs"][0] is None


def test_the_queue_says_one_thing_for_prompts_and_for_n(client, monkeypatch):
    model = client.app.state.ctx.store.get("llama")
    monkeypatch.setattr(model, "admission", Admission(concurrency=1, queue_size=2))
    capacity = "more than model 'llama' takes at once (3: 1 running + 2 queued, job_queue_size)"
    from shardserve.serving import routes_openai

    def no_encoding(*args):  # a request that can never fit is refused before any prompt is encoded
        raise AssertionError("a prompt was encoded for a request the queue can never take")

    monkeypatch.setattr(routes_openai, "_encoded", no_encoding)
    monkeypatch.setattr(routes_openai, "chat_prompt_ids", no_encoding)
    r = client.post("/v1/chat/completions", json=CHAT | {"n": 4, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert r.json()["error"]["message"] == f"n: 4 requests (1 prompt(s) x 4 choices) are {capacity}"
    r = client.post("/v1/completions", json={"model": "llama", "prompt": PROMPTS[:2], "n": 2, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert r.json()["error"]["message"] == f"n: 4 requests (2 prompt(s) x 2 choices) are {capacity}"
    r = client.post("/v1/completions", json={"model": "llama", "prompt": PROMPTS + ["a"], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert r.json()["error"]["message"] == f"prompt: 4 prompts are {capacity}"
    with pytest.raises(APIError) as e:
        model.admission.acquire("llama", 4)
    assert e.value.status == 400 and e.value.message == f"the request: 4 prompts are {capacity}"
    assert model.admission.inflight == 0


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": "llama", "prompt": PROMPTS[:2]}),
    ("/v1/completions", {"model": "llama", "prompt": PROMPTS[0], "echo": True, "max_tokens": 0}),
    ("/v1/chat/completions", CHAT),
])
def test_streamed_usage_adds_up_to_the_answers(client, path, body):
    body = {**body, "n": 2, "temperature": 0, "ignore_eos": True}
    body.setdefault("max_tokens", 5)
    answer = post_ok(client, path, body)["usage"]
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = sse_chunks(client, path, {**body, "stream_options": options})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer
    last = {}  # choice index -> the usage of its last chunk: that choice's alone
    for chunk in chunks[:-1]:
        last[chunk["choices"][0]["index"]] = chunk["usage"]
    assert sum(u["completion_tokens"] for u in last.values()) == answer["completion_tokens"]
    # each choice's own prompt; the whole request's counts each prompt once, not per choice (n 2)
    assert sum(u["prompt_tokens"] for u in last.values()) == 2 * answer["prompt_tokens"]
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in last.values())
    plain = sse_chunks(client, path, {**body, "stream_options": {"include_usage": True}})
    assert all(c["usage"] is None for c in plain[:-1]) and plain[-1]["usage"] == answer
    assert all("usage" not in c for c in sse_chunks(client, path, body))


def test_the_generated_tokens_are_counted_once_per_choice_for_metrics(client):
    """The request path's one count (RequestTimer's) feeds the metrics, streamed (DELTA updates,
    several) or not (one FINAL update)."""
    metrics = client.app.state.ctx.metrics

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name, {"model": "llama"}) or 0.0

    body = {"model": "llama", "prompt": PROMPTS[0], "n": 2, "max_tokens": 5, "ignore_eos": True}
    for stream in (False, True):
        tokens = sample("shardserve_generation_tokens_total")
        firsts = sample("shardserve_time_to_first_token_seconds_count")
        if stream:
            sse_chunks(client, "/v1/completions", body)
        else:
            post_ok(client, "/v1/completions", body)
        assert sample("shardserve_generation_tokens_total") - tokens == 10
        assert sample("shardserve_time_to_first_token_seconds_count") - firsts == 2


def _update(prompt_tokens: int, tokens: int, text_end: int) -> RequestOutput:
    """A DELTA update of `tokens` new tokens whose text ends at `text_end`."""
    ids = list(range(tokens))
    return RequestOutput("r", None, [1] * prompt_tokens, "x", ids, "x", ids, False,
                         token_text_ends=[text_end] * tokens)


def test_choice_streams_keep_each_choices_own_counts_and_text_end():
    """Two prompts (2 and 3 tokens) x n 2: choice k answers prompt k // 2; its chunks' usage is
    its own so far, the closing chunk's counts each prompt once."""
    body = oa.CompletionRequest(prompt=["a", "b"], n=2, stream=True,
                                stream_options={"include_usage": True, "continuous_usage_stats": True})
    streams = oa.ChoiceStreams(body, "text_completion", "cmpl-1", "m", 4)
    for k, tokens, end in ((0, 3, 7), (3, 1, 2), (1, 2, 4), (0, 1, 9), (2, 4, 5)):
        streams.add(k, _update(2 if k < 2 else 3, tokens, end))
    usage = [streams.with_usage(k, {})["usage"] for k in range(4)]
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [(2, 4), (2, 2), (3, 4), (3, 1)]
    assert streams.text_ends == [9, 4, 5, 2]
    (closing,) = streams.closing()
    assert closing["choices"] == [] and closing["usage"] == {"prompt_tokens": 5, "completion_tokens": 11,
                                                             "total_tokens": 16}
    assert oa.ChoiceStreams(body, "text_completion", "cmpl-1", "m", 4).closing() == []  # no update yet
    plain = oa.ChoiceStreams(oa.CompletionRequest(prompt="a", stream=True), "text_completion", "c", "m", 1)
    plain.add(0, _update(2, 1, 1))
    assert plain.with_usage(0, {}) == {} and plain.closing() == []  # usage not asked
