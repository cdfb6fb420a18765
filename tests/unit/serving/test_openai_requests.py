"""The OpenAI routes in process (FastAPI's TestClient) on a tiny Llama: streamed logprobs under
held-back text, max_tokens null, the sampling fields as vLLM's clients send them, and top
logprobs (their response objects first built from hand-made engine outputs)."""

from __future__ import annotations

import pytest

from helpers.served_app import artifact, post_ok, served, sse_chunks
from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.request import (
    FinishReason,
    OutputKind,
    Request,
    RequestOutput,
    RequestStatus,
)
from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving import openai_logprobs as olp
from shardserve.serving import openai_protocol as oa
from shardserve.serving.chat import chat_prompt_ids
from shardserve.serving.http_errors import APIError

MAX_MODEL_LEN = 256  # the tiny Llama's positions
CHAT = {"model": "llama", "messages": [{"role": "user", "content": "Tell me a story"}]}
COMPLETION = {"model": "llama", "prompt": "Once upon a time"}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    with served((("llama", artifact(tmp_path_factory.mktemp("openai") / "llama", tiny_checkpoint("llama"))),)) as c:
        yield c


def _error(r) -> tuple[str, str | None]:
    assert r.status_code == 400, r.text
    return r.json()["error"]["message"], r.json()["error"]["param"]


def _with_stop(client, path: str, body: dict, text_of) -> dict:
    """`body` with a stop string of 8 characters from the middle of its greedy answer: 7 of them
    are held back at each step, so several updates have tokens but no text."""
    full = text_of(post_ok(client, path, body))
    stop = full[len(full) // 3: len(full) // 3 + 8]
    assert len(stop) == 8, full
    return {**body, "stop": [stop]}


# -- 1. streamed logprobs add up to the unstreamed answer's, with text held back -----------------

def test_streamed_chat_logprobs_include_the_tokens_of_held_back_text(client):
    path = "/v1/chat/completions"
    body = _with_stop(client, path, {**CHAT, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": True}, lambda r: r["choices"][0]["message"]["content"])
    plain = post_ok(client, path, body)
    chunks = sse_chunks(client, path, body)
    choices = [c for chunk in chunks for c in chunk["choices"]]
    streamed = [entry for c in choices if c["logprobs"] for entry in c["logprobs"]["content"]]
    assert plain["choices"][0]["finish_reason"] == "stop" and plain["usage"]["completion_tokens"] >= 3
    assert len(streamed) == plain["usage"]["completion_tokens"]
    assert streamed == plain["choices"][0]["logprobs"]["content"]
    assert "".join(c["delta"].get("content", "") for c in choices) == plain["choices"][0]["message"]["content"]


def test_streamed_completion_logprobs_include_the_tokens_of_held_back_text(client):
    path = "/v1/completions"
    body = _with_stop(client, path, {**COMPLETION, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": 0}, lambda r: r["choices"][0]["text"])
    plain = post_ok(client, path, body)["choices"][0]
    choices = [c for chunk in sse_chunks(client, path, body) for c in chunk["choices"]]
    for key in ("tokens", "token_logprobs"):
        assert [x for c in choices for x in c["logprobs"][key]] == plain["logprobs"][key]
    assert "".join(c["text"] for c in choices) == plain["text"]


# -- 2. max_tokens: null fills the context (each prompt's own); omitted is 16 ----------------------

def test_completion_max_tokens_null_fills_the_context_and_omitted_is_16(client):
    body = {**COMPLETION, "temperature": 0.0, "ignore_eos": True}
    filled = post_ok(client, "/v1/completions", {**body, "max_tokens": None})
    assert filled["usage"]["total_tokens"] == MAX_MODEL_LEN
    assert filled["choices"][0]["finish_reason"] == "length"
    assert post_ok(client, "/v1/completions", body)["usage"]["completion_tokens"] == 16
    # each prompt of a batch fills the context after itself, not after the longest prompt
    batch = post_ok(client, "/v1/completions", {**body, "prompt": [[1, 5], [5] * 100], "max_tokens": None})
    assert [c["finish_reason"] for c in batch["choices"]] == ["length", "length"]
    assert batch["usage"]["completion_tokens"] == (MAX_MODEL_LEN - 2) + (MAX_MODEL_LEN - 100)


# -- 3. top_k: -1 disables, as 0 does -------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_top_k_minus_one_disables_top_k_like_zero(client, path, body):
    body = {**body, "max_tokens": 8, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    disabled = post_ok(client, path, {**body, "top_k": 0})
    assert post_ok(client, path, {**body, "top_k": -1})["choices"] == disabled["choices"]
    message, param = _error(client.post(path, json={**body, "top_k": -2}))
    assert param == "top_k" and "top_k" in message and "-2" in message


# -- 4. any 64-bit seed, negative ones included ---------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_a_negative_seed_is_accepted_and_reproducible(client, path, body):
    body = {**body, "max_tokens": 8, "temperature": 1.0, "ignore_eos": True}
    first = post_ok(client, path, {**body, "seed": -1})
    assert post_ok(client, path, {**body, "seed": -1})["choices"] == first["choices"]
    for seed in (-2**63, 2**64 - 1):
        post_ok(client, path, {**body, "seed": seed})
    message, param = _error(client.post(path, json={**body, "seed": 2**64}))
    assert param == "seed" and "2^64" in message


# -- 5. stream_options needs stream: true ---------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_stream_options_without_stream_is_a_400_naming_it(client, path, body):
    body = {**body, "max_tokens": 2, "ignore_eos": True, "stream_options": {"include_usage": True}}
    for stream in ({}, {"stream": False}):
        message, param = _error(client.post(path, json={**body, **stream}))
        assert param == "stream_options" and message.startswith("stream_options")
    assert post_ok(client, path, {**body, "stream_options": None})["usage"]["completion_tokens"] == 2
    chunks = sse_chunks(client, path, body)  # with stream: true it is honoured
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


# -- 6. top logprobs: the response objects, from hand-made engine outputs --------------------------

class _ByteTokenizer:
    """Token id -> its bytes; decoding joins them, a cut UTF-8 character reading U+FFFD."""

    VOCAB = {0: b"Hi", 1: b" there", 2: b"\xc3", 3: b"\xa9", 4: b"!", 5: b"\xe2", 6: b" th", 7: b"ere"}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return b"".join(self.VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def _outputs(token_ids: list[int], logprobs: list[float], tops: list | None, steps: list[int],
             prompt: list[int] | None = None) -> list[RequestOutput]:
    """The cumulative updates of a generation whose i-th update adds steps[i] tokens."""
    outs, n = [], 0
    for k in steps:
        outs.append(RequestOutput(
            request_id="r", prompt=None, prompt_token_ids=prompt or [0], text="", token_ids=token_ids[:n + k],
            delta_text="", delta_token_ids=token_ids[n:n + k], finished=n + k == len(token_ids),
            logprobs=logprobs[:n + k], top_logprobs=None if tops is None else tops[:n + k]))
        n += k
    assert n == len(token_ids)
    return outs


def test_completion_top_logprobs_map_the_chosen_token_then_its_alternatives():
    tok = _ByteTokenizer()
    tops = [[(1, -0.5), (4, -1.0)],  # the chosen token is the most likely one
            [(0, -0.1), (6, -0.2)],  # it is not among the alternatives: logprobs + 1 entries
            [(2, -0.3), (5, -0.4)]]  # two alternatives of the same text (U+FFFD): one entry, the first's
    body = olp.completion_logprobs(tok, [1, 4, 3], [-0.5, -2.0, -0.7], tops, [0, 6, 7])
    assert body["tokens"] == [" there", "!", "\ufffd"]
    assert body["token_logprobs"] == [-0.5, -2.0, -0.7]
    assert body["top_logprobs"] == [{" there": -0.5, "!": -1.0}, {"!": -2.0, "Hi": -0.1, " th": -0.2},
                                    {"\ufffd": -0.7}]
    assert [list(entry) for entry in body["top_logprobs"]][1] == ["!", "Hi", " th"]  # the chosen first
    assert body["text_offset"] == [0, 6, 7]
    # logprobs 0 (no alternatives asked): only the chosen token, as vLLM
    assert olp.completion_logprobs(tok, [1, 4], [-0.5, -2.0])["top_logprobs"] == [{" there": -0.5}, {"!": -2.0}]
    # -inf, which JSON cannot carry, is sent as OpenAI's -9999.0
    inf = olp.completion_logprobs(tok, [1], [float("-inf")], [[(0, -0.1), (4, float("-inf"))]])
    assert inf["token_logprobs"] == [-9999.0] and inf["top_logprobs"] == [{" there": -9999.0, "Hi": -0.1, "!": -9999.0}]


def test_chat_top_logprobs_list_each_tokens_alternatives_most_likely_first():
    tok = _ByteTokenizer()
    body = olp.chat_logprobs(tok, [0, 3], [-0.25, -1.5], [[(0, -0.25), (1, -2.0)], [(4, -0.5), (2, float("-inf"))]])
    assert body == {"content": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": " there", "logprob": -2.0, "bytes": list(b" there")}]},
        {"token": "\ufffd", "logprob": -1.5, "bytes": [239, 191, 189], "top_logprobs": [
            {"token": "!", "logprob": -0.5, "bytes": [33]},
            {"token": "\ufffd", "logprob": -9999.0, "bytes": [239, 191, 189]}]},
    ]}
    assert [e["top_logprobs"] for e in olp.chat_logprobs(tok, [0, 3], [-0.25, -1.5])["content"]] == [[], []]


def test_new_top_logprobs_and_pending_tokens_add_up_to_the_whole_answers():
    ids, lps = [0, 1, 4, 6, 7], [-0.1, -0.2, -0.3, -0.4, -0.5]
    tops = [[(i, -0.01 * i), (i + 1, -1.0)] for i in ids]
    outs = _outputs(ids, lps, tops, [1, 2, 0, 2])
    assert [o.new_entries(o.top_logprobs) for o in outs] == [tops[:1], tops[1:3], [], tops[3:]]
    assert [o.new_entries(o.top_logprobs) for o in _outputs(ids, lps, None, [2, 3])] == [None, None]
    # the chat route: updates without text wait in PendingTokens; the next chunk takes them all
    pending, taken = olp.PendingTokens(), []
    for out, sends_chunk in zip(outs, [False, True, False, True], strict=True):
        pending.add(out)
        if sends_chunk:
            taken.append(pending.take())
    assert taken == [([0, 1, 4], lps[:3], tops[:3]), ([6, 7], lps[3:], tops[3:])]
    assert pending.take() == ([], [], None)
    pending.add(_outputs(ids, lps, None, [5])[0])  # no alternatives asked
    assert pending.take() == (ids, lps, None)


def _detokenised(tokenizer, token_ids: list[int], steps: list[int],
                 kind: OutputKind = OutputKind.CUMULATIVE) -> list[RequestOutput]:
    """The engine's own updates (its output processor) of a generation whose i-th update adds
    steps[i] tokens, ending by length."""
    request = Request("r", [0], SamplingParams(max_new_tokens=len(token_ids)), output_kind=kind)
    outputs = OutputProcessor(tokenizer)
    outputs.add(request)
    outs, n = [], 0
    for k in steps:
        for token in token_ids[n:n + k]:
            request.output_token_ids.append(token)
            if len(request.output_token_ids) == len(token_ids):
                request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.LENGTH
            outputs.new_text(request, [token])
        outs.append(outputs.output(request))
        n += k
    return outs


def test_text_offsets_are_where_each_tokens_text_starts_streamed_or_not():
    tok = _ByteTokenizer()
    # "Hi" "é" (two tokens: the first alone is half a character) " th" "ere" "!"
    ids = [0, 2, 3, 6, 7, 4]
    whole = olp.text_offsets(_detokenised(tok, ids, [6])[0], start=3)
    assert whole == [3, 5, 5, 6, 9, 12]  # "Hi" is 2 characters, "é" 1, " th" 3, "ere" 3
    assert "Hié there!"[5 - 3] == "é" and "Hié there!"[9 - 3:12 - 3] == "ere"
    for steps in ([1, 1, 0, 3, 1], [1] * 6, [2, 1, 2, 1]):  # a stream's DELTA updates
        streamed, before = [], 0
        for out in _detokenised(tok, ids, steps, OutputKind.DELTA):
            streamed += olp.text_offsets(out, start=3, before=before)
            before = out.token_text_ends[-1] if out.token_text_ends else before
        assert streamed == whole, steps


def test_logprobs_fields_out_of_range_are_400s_naming_them():
    def refused(request) -> tuple[str, str | None]:
        with pytest.raises(APIError) as e:
            request.check_supported()
        assert e.value.status == 400
        return str(e.value), e.value.param

    for n in (-1, 21):
        message, param = refused(oa.CompletionRequest(prompt="x", logprobs=n))
        assert param == "logprobs" and message.startswith("logprobs") and str(n) in message
        message, param = refused(oa.ChatCompletionRequest(messages=[{"role": "user", "content": "x"}],
                                                          logprobs=True, top_logprobs=n))
        assert param == "top_logprobs" and message.startswith("top_logprobs") and str(n) in message
    message, param = refused(oa.ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], top_logprobs=2))
    assert param == "top_logprobs" and "logprobs: true" in message
    for n in (0, 20):  # accepted: 0 asks for nothing, so it needs no logprobs (as vLLM)
        oa.CompletionRequest(prompt="x", logprobs=n).check_supported()
        oa.ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], top_logprobs=0).check_supported()
        oa.ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], logprobs=True,
                                 top_logprobs=n).check_supported()


# -- 7. top logprobs through the routes -----------------------------------------------------------

TOPS = 5


def _check_chat_tops(content: list[dict], n: int, greedy: bool) -> None:
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == n, entry
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)
        assert entry["logprob"] >= top[-1]["logprob"]  # greedy, or sampled from the top n (top_k)
        assert (entry["token"], entry["logprob"]) in [(t["token"], t["logprob"]) for t in top]
        if greedy:
            assert (entry["token"], entry["logprob"]) == (top[0]["token"], top[0]["logprob"])


def test_chat_top_logprobs_are_the_n_most_likely_tokens_greedy_or_sampled(client):
    body = {**CHAT, "max_tokens": 12, "ignore_eos": True, "logprobs": True, "top_logprobs": TOPS}
    greedy = post_ok(client, "/v1/chat/completions", {**body, "temperature": 0.0})["choices"][0]["logprobs"]["content"]
    assert len(greedy) == 12
    _check_chat_tops(greedy, TOPS, greedy=True)
    # sampling among the TOPS most likely tokens: each chosen one is among its alternatives
    sampled = post_ok(client, "/v1/chat/completions", {**body, "temperature": 1.0, "seed": 3, "top_k": TOPS})
    _check_chat_tops(sampled["choices"][0]["logprobs"]["content"], TOPS, greedy=False)
    for n in (0, None):  # none asked: empty lists, as OpenAI's
        plain = post_ok(client, "/v1/chat/completions", {**body, "temperature": 0.0, "top_logprobs": n})
        assert [e["top_logprobs"] for e in plain["choices"][0]["logprobs"]["content"]] == [[]] * 12


def test_completion_top_logprobs_are_the_chosen_token_and_the_chats_alternatives(client):
    """The same prompt ids on both routes: a completion's top_logprobs entry is its chosen token
    and then the chat's alternatives, one entry per text (several tokens decode to U+FFFD)."""
    body = {"model": "llama", "max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    chat = post_ok(client, "/v1/chat/completions", {**body, **CHAT, "logprobs": True, "top_logprobs": TOPS})
    tokenizer = client.app.state.ctx.store.get("llama").engine.tokenizer
    prompt = chat_prompt_ids(tokenizer, CHAT["messages"])
    completion = post_ok(client, "/v1/completions", {**body, "prompt": prompt, "logprobs": TOPS})["choices"][0]
    content, lp = chat["choices"][0]["logprobs"]["content"], completion["logprobs"]
    assert completion["text"] == chat["choices"][0]["message"]["content"]
    assert lp["tokens"] == [e["token"] for e in content] and lp["token_logprobs"] == [e["logprob"] for e in content]
    for entry, top in zip(content, lp["top_logprobs"], strict=True):
        expected = {entry["token"]: entry["logprob"]}
        for alt in entry["top_logprobs"]:
            expected.setdefault(alt["token"], alt["logprob"])
        assert top == expected and list(top) == list(expected)
        assert len(top) <= TOPS + 1 and top[entry["token"]] == max(top.values())  # greedy: the most likely
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert lp["text_offset"][-1] < len(completion["text"])
    # logprobs 0: the chosen token's only, as vLLM
    zero = post_ok(client, "/v1/completions", {**body, "prompt": prompt, "logprobs": 0})["choices"][0]["logprobs"]
    assert zero["top_logprobs"] == [{t: x} for t, x in zip(lp["tokens"], lp["token_logprobs"], strict=True)]
    assert zero["text_offset"] == lp["text_offset"]


def test_streamed_chat_top_logprobs_equal_the_unstreamed_ones_with_text_held_back(client):
    path = "/v1/chat/completions"
    body = _with_stop(client, path, {**CHAT, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": True, "top_logprobs": 3}, lambda r: r["choices"][0]["message"]["content"])
    plain = post_ok(client, path, body)["choices"][0]
    choices = [c for chunk in sse_chunks(client, path, body) for c in chunk["choices"]]
    streamed = [entry for c in choices if c["logprobs"] for entry in c["logprobs"]["content"]]
    assert plain["finish_reason"] == "stop"
    assert streamed == plain["logprobs"]["content"]
    _check_chat_tops(streamed, 3, greedy=True)


def test_streamed_completion_top_logprobs_and_offsets_equal_the_unstreamed_ones(client):
    path = "/v1/completions"
    body = _with_stop(client, path, {**COMPLETION, "max_tokens": 32, "temperature": 0.0, "ignore_eos": True,
                                     "logprobs": 3, "echo": True}, lambda r: r["choices"][0]["text"])
    whole = post_ok(client, path, body)
    plain, p = whole["choices"][0], whole["usage"]["prompt_tokens"]
    choices = [c for chunk in sse_chunks(client, path, body) for c in chunk["choices"]]
    assert plain["finish_reason"] == "stop" and plain["text"].startswith(COMPLETION["prompt"])
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in choices for x in c["logprobs"][key]] == plain["logprobs"][key], key
    assert "".join(c["text"] for c in choices) == plain["text"]
    offsets = plain["logprobs"]["text_offset"]
    assert offsets[p] == len(COMPLETION["prompt"]) and offsets == sorted(offsets)  # after the echoed prompt
    tops = plain["logprobs"]["top_logprobs"]
    assert tops[0] is None and all(1 <= len(top) <= 4 for top in tops[1:])  # the prompt's first: none


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {**COMPLETION}, "logprobs"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True}, "top_logprobs"),
])
def test_top_logprobs_out_of_range_are_400s_naming_the_field(client, path, body, field):
    for n in (-1, 21):
        message, param = _error(client.post(path, json={**body, "max_tokens": 2, field: n}))
        assert param == field and message.startswith(field) and str(n) in message and "20" in message
    post_ok(client, path, {**body, "max_tokens": 2, field: 20})  # the most


def test_chat_top_logprobs_without_logprobs_is_a_400_naming_it(client):
    for logprobs in ({}, {"logprobs": False}):
        message, param = _error(client.post("/v1/chat/completions",
                                            json={**CHAT, "max_tokens": 2, "top_logprobs": 3, **logprobs}))
        assert param == "top_logprobs" and message.startswith("top_logprobs") and "logprobs: true" in message
    plain = post_ok(client, "/v1/chat/completions", {**CHAT, "max_tokens": 2, "top_logprobs": 0})  # asks for nothing
    assert plain["choices"][0]["logprobs"] is None
