"""/v1/completions encodes a text prompt once, in the route, and hands its n choices' engine
requests the ids; both engines (ours and the Accelerate engine) take them, answer as for the ids
themselves, and still refuse a text prompt too long for the model with a 400 naming `prompt`.
In process (FastAPI's TestClient) on a tiny Llama."""

from __future__ import annotations

import pytest

from helpers.served_app import artifact, post_ok, served, sse_chunks

TEXT = "Once upon a time, naïve"
ENGINES = ("ours", "accelerate")


class CountingTokenizer:
    """The engine's tokenizer, recording every text it encodes (encode and __call__ alike)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def encode(self, text, *args, **kwargs):
        self.texts.append(text)
        return self._tokenizer.encode(text, *args, **kwargs)

    def __call__(self, text, *args, **kwargs):
        self.texts.append(text)
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("encode_once")
    accelerate = root / "accelerate"
    accelerate.mkdir()
    (accelerate / "serving.properties").write_text(
        f"engine=Accelerate\noption.model_id={tiny_checkpoint('llama')}\noption.dtype=fp32\n")
    with served((("ours", artifact(root / "ours", tiny_checkpoint("llama"))), ("accelerate", str(accelerate)))) as c:
        yield c


@pytest.fixture
def counting(client, monkeypatch):
    """name -> the CountingTokenizer that the route and the engine of that model share now."""

    def wrap(name: str) -> CountingTokenizer:
        engine = client.app.state.ctx.store.get(name).engine.engines[0]
        tokenizer = CountingTokenizer(engine.tokenizer)
        monkeypatch.setattr(engine, "tokenizer", tokenizer)
        return tokenizer

    return wrap


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("fields", "stream"), [
    ({"max_tokens": 3}, False),
    ({"max_tokens": None}, False),  # null: the prompt's length sets it
    ({"max_tokens": 0, "echo": True, "logprobs": 1}, False),  # scored alone, offsets of the echo
    ({"max_tokens": 3, "echo": True, "logprobs": 0}, True),
])
def test_a_text_prompt_is_encoded_once_for_all_its_choices(client, counting, engine, fields, stream):
    tokenizer = counting(engine)
    body = {"model": engine, "prompt": TEXT, "n": 3, "temperature": 0, "ignore_eos": True, **fields}
    if stream:
        chunks = sse_chunks(client, "/v1/completions", body)
        assert sorted({c["choices"][0]["index"] for c in chunks}) == [0, 1, 2]
    else:
        assert len(post_ok(client, "/v1/completions", body)["choices"]) == 3
    assert tokenizer.texts.count(TEXT) == 1, tokenizer.texts


@pytest.mark.parametrize("engine", ENGINES)
def test_a_text_prompt_answers_as_its_token_ids_do(client, engine):
    ids = client.app.state.ctx.store.get(engine).engine.tokenizer.encode(TEXT)
    body = {"model": engine, "max_tokens": 4, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    text, by_ids = (post_ok(client, "/v1/completions", {**body, "prompt": p}) for p in (TEXT, ids))
    assert text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    assert text["choices"][0]["logprobs"]["tokens"] == by_ids["choices"][0]["logprobs"]["tokens"]
    assert text["usage"] == by_ids["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 4,
                                                "total_tokens": len(ids) + 4}
    echo = post_ok(client, "/v1/completions", {**body, "prompt": TEXT, "echo": True, "max_tokens": 0})
    assert echo["choices"][0]["text"] == TEXT  # a text prompt is echoed as given


@pytest.mark.parametrize("engine", ENGINES)
def test_a_text_prompt_too_long_is_a_400_naming_prompt(client, engine):
    model = client.app.state.ctx.store.get(engine)
    words = " ".join(["story"] * model.engine.max_model_len)
    assert len(model.engine.tokenizer.encode(words)) > model.engine.max_model_len
    for fields, says in (({"max_tokens": 4}, "max_model_len"),
                         ({"max_tokens": 0, "echo": True}, "scored alone"),
                         ({"max_tokens": None}, "max_model_len")):
        r = client.post("/v1/completions", json={"model": engine, "prompt": words, **fields})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "prompt" and says in error["message"], error
