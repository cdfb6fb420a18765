"""The real `openai` client against the live server: completions and chat, plain and streaming."""

from __future__ import annotations

import openai
import pytest

GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture()
def oai(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_models_lists_every_served_model(oai):
    ids = {m.id for m in oai.models.list().data}
    assert {"llama", "llama-t", "gpt2", "handler"} <= ids


def test_completion_plain_and_streamed_agree(oai):
    plain = oai.completions.create(model="llama", prompt="Once upon a time", max_tokens=8, **GREEDY)
    assert plain.object == "text_completion"
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 8
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 8

    chunks = list(oai.completions.create(model="llama", prompt="Once upon a time", max_tokens=8, stream=True,
                                         stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8  # the usage chunk closes the stream


def test_completion_batch_of_prompts_and_token_ids(oai):
    single = oai.completions.create(model="llama", prompt="Hello", max_tokens=4, **GREEDY)
    batch = oai.completions.create(model="llama", prompt=["Hello", "The quick brown fox"], max_tokens=4, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == single.choices[0].text  # batching does not change greedy output
    assert batch.usage.completion_tokens == 8
    by_ids = oai.completions.create(model="llama", prompt=[1, 300, 301], max_tokens=2, **GREEDY)
    assert by_ids.usage.prompt_tokens == 3


def test_completion_echo_and_logprobs(oai):
    out = oai.completions.create(model="llama", prompt="Hello", max_tokens=3, echo=True, logprobs=1, **GREEDY)
    assert out.choices[0].text.startswith("Hello")
    logprobs = out.choices[0].logprobs.token_logprobs  # the echoed prompt's, then the completion's
    assert len(logprobs) == out.usage.prompt_tokens + 3 and logprobs[0] is None
    assert all(lp <= 0 for lp in logprobs[1:])


def test_chat_plain_and_streamed_agree(oai):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    plain = oai.chat.completions.create(model="llama", messages=messages, max_tokens=6, **GREEDY)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens == 6

    stream = oai.chat.completions.create(model="llama", messages=messages, max_tokens=6, stream=True, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_uses_the_tokenizers_chat_template(oai, server):
    out = oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=1, **GREEDY)
    tokenizer = server.store.get("llama").engine.tokenizer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))


def test_chat_default_max_tokens_fills_the_context(oai):
    out = oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], **GREEDY)
    assert out.usage.total_tokens == 256  # the tiny model's max_model_len
    assert out.choices[0].finish_reason == "length"


def test_openai_routes_serve_the_accelerate_engine(oai):
    out = oai.completions.create(model="gpt2", prompt="Hello", max_tokens=5, **GREEDY)
    assert out.usage.completion_tokens == 5


def test_openai_errors_are_typed(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="nope", prompt="x", max_tokens=1)
    assert "nope" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="llama", prompt="x", max_tokens=300)
    assert "300" in e.value.message and "256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="handler", messages=[{"role": "user", "content": "x"}])
    assert "custom handler" in e.value.message


def test_chat_streamed_logprobs_add_up_to_the_plain_ones_under_a_stop_string(oai):
    """A stop string holds text back, so some updates have tokens but no text to send: their
    logprobs come with the next chunk, never dropped."""
    messages = [{"role": "user", "content": "Say hello"}]
    full = oai.chat.completions.create(model="llama", messages=messages, max_tokens=32, **GREEDY)
    text = full.choices[0].message.content
    stop = text[len(text) // 3: len(text) // 3 + 8]  # 7 characters held back at every step
    options = {"model": "llama", "messages": messages, "max_tokens": 32, "stop": [stop], "logprobs": True, **GREEDY}
    plain = oai.chat.completions.create(**options)
    chunks = list(oai.chat.completions.create(**options, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert plain.choices[0].finish_reason == "stop"
    assert len(streamed) == plain.usage.completion_tokens
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in plain.choices[0].logprobs.content]


def test_completion_max_tokens_null_fills_the_context(oai):
    out = oai.completions.create(model="llama", prompt="Hello", max_tokens=None, **GREEDY)
    assert out.usage.total_tokens == 256  # the tiny model's max_model_len
    assert oai.completions.create(model="llama", prompt="Hello", **GREEDY).usage.completion_tokens == 16


@pytest.mark.parametrize("model", ["llama", "gpt2"])  # our engine and the Accelerate one
def test_vllm_clients_disabled_top_k_and_negative_seed_are_accepted(oai, model):
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 1.0, "seed": -1}
    first = oai.completions.create(**body, extra_body={"top_k": -1, "ignore_eos": True})
    again = oai.completions.create(**body, extra_body={"top_k": 0, "ignore_eos": True})
    assert first.choices[0].text == again.choices[0].text


def test_stream_options_without_stream_is_refused(oai):
    for create, extra in ((oai.completions.create, {"prompt": "x"}),
                          (oai.chat.completions.create, {"messages": [{"role": "user", "content": "x"}]})):
        with pytest.raises(openai.BadRequestError) as e:
            create(model="llama", max_tokens=1, stream_options={"include_usage": True}, **extra)
        assert e.value.body["param"] == "stream_options"


@pytest.mark.parametrize("model", ["llama", "gpt2"])  # our engine and the Accelerate one
def test_top_logprobs_through_the_openai_client(oai, model):
    messages = [{"role": "user", "content": "Say hello"}]
    chat = oai.chat.completions.create(model=model, messages=messages, max_tokens=4, logprobs=True, top_logprobs=3,
                                       **GREEDY)
    content = chat.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)  # greedy
    out = oai.completions.create(model=model, prompt="Hello", max_tokens=4, logprobs=3, echo=True, **GREEDY)
    lp, p = out.choices[0].logprobs, out.usage.prompt_tokens
    assert len(lp.top_logprobs) == len(lp.tokens) == len(lp.text_offset) == p + 4  # the prompt's, then 4
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before it
    for i, (token, logprob, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)):
        if i:
            assert 1 <= len(top) <= 4 and next(iter(top)) == token and top[token] == logprob
            assert i < p or logprob == max(top.values())  # the completion is greedy
    assert lp.text_offset[p] == len("Hello") and lp.text_offset == sorted(lp.text_offset)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=model, messages=messages, max_tokens=1, top_logprobs=3)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=model, prompt="Hello", max_tokens=1, logprobs=21)
    assert e.value.body["param"] == "logprobs"


def word_token(server, model: str) -> int:
    """A token that decodes to a plain word piece, whose repeats decode to repeats of it."""
    tokenizer = server.store.get(model).engine.tokenizer
    return next(t for t in range(3, 512) if tokenizer.decode([t]).strip().isalpha())


@pytest.mark.parametrize("model", ["llama", "gpt2"])  # our engine and the Accelerate one
def test_logit_bias_forces_a_token_in_completions_and_chat(oai, server, model):
    token = word_token(server, model)
    text = server.store.get(model).engine.tokenizer.decode([token])
    free = oai.completions.create(model=model, prompt="Hello", max_tokens=4, **GREEDY)
    assert free.choices[0].text != text * 4  # else the bias would have nothing to show
    out = oai.completions.create(model=model, prompt="Hello", max_tokens=4, logit_bias={str(token): 100}, **GREEDY)
    assert out.choices[0].text == text * 4
    chat = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}],
                                       max_tokens=4, logit_bias={str(token): 100}, **GREEDY)
    assert chat.choices[0].message.content == text * 4


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_bad_logit_bias_is_a_400_naming_it(oai, model):
    for bias, message in (({"a": 1}, "keys must be token ids"), ({"5": 150}, "[-100, 100]"),
                          ({str(10**6): 1}, "[0, 512)")):
        for create, extra in ((oai.completions.create, {"prompt": "x"}),
                              (oai.chat.completions.create, {"messages": [{"role": "user", "content": "x"}]})):
            with pytest.raises(openai.BadRequestError) as e:
                create(model=model, max_tokens=1, logit_bias=bias, **extra)
            assert e.value.body["param"] == "logit_bias" and message in e.value.message, e.value.body


@pytest.mark.parametrize("model", ["llama", "gpt2"])  # our engine; the Accelerate engine
@pytest.mark.parametrize("extra", [{}, {"echo": True}, {"stop": ["a", "e "]}, {"n": 3, "seed": 1, "temperature": 1.0},
                                   {"echo": True, "max_tokens": 0, "n": 2}],
                         ids=["plain", "echo", "stop", "n-sampled", "scored"])
def test_a_streamed_completion_adds_up_to_the_answer(oai, model, extra):
    """A stream is built from the engine's DELTA updates, an answer from its FINAL one: chunk by
    chunk, text, tokens, logprobs, alternatives, text offsets and finish reasons must add up to
    the answer's, and the closing usage must equal it (continuous usage counting up per choice).
    With n choices, logprob values agree to float rounding: the choices of the stream and of the
    answer may share their steps differently, and a batch's shape changes the last bits of its
    logits. One choice runs alone either way: exact."""
    body = {"model": model, "prompt": "hello there", "max_tokens": 10, "logprobs": 2, **GREEDY, **extra}
    whole = oai.completions.create(**body)
    chunks = list(oai.completions.create(**body, stream=True, stream_options={
        "include_usage": True, "continuous_usage_stats": True}))
    fields = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    merged = {c.index: {"text": "", "finish_reason": None, **{f: [] for f in fields}} for c in whole.choices}
    counts = {c.index: [] for c in whole.choices}
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        m = merged[choice.index]
        m["text"] += choice.text
        m["finish_reason"] = choice.finish_reason or m["finish_reason"]
        for f in fields:
            m[f] += getattr(choice.logprobs, f) if choice.logprobs else []
        counts[choice.index].append(chunk.usage.completion_tokens)
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage
    for choice in whole.choices:
        got, lp = merged[choice.index], choice.logprobs
        assert (got["text"], got["finish_reason"], got["tokens"], got["text_offset"]) == (
            choice.text, choice.finish_reason, lp.tokens, lp.text_offset), choice.index
        def close(want):  # exact for one choice
            return pytest.approx(want, abs=1e-5) if body.get("n", 1) > 1 else want

        assert got["token_logprobs"] == close(lp.token_logprobs)
        for streamed, answered in zip(got["top_logprobs"], lp.top_logprobs, strict=True):  # None: echo's first
            assert streamed is None if answered is None else streamed == close(answered)
        assert counts[choice.index] == sorted(counts[choice.index])
