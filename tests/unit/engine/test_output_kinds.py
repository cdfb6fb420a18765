"""Output kinds (request.OutputKind): the same request reported whole at every step (CUMULATIVE),
by its new parts (DELTA) or once at its end (FINAL) ends the same, whatever the kind."""

from __future__ import annotations

import pytest

from helpers.output_feed import feed
from shardserve import OutputKind, SamplingParams
from shardserve.assets import default_model_path
from shardserve.engine.request import FinishReason
from shardserve.engine.tokenizer import load_tokenizer

PER_TOKEN = ("token_ids", "token_text_ends", "logprobs", "top_logprobs")


def run(llm, kind: OutputKind, params: SamplingParams, prompt: str = "the cat", abort_after: int | None = None):
    """The outputs of one request, stepping the engine; aborted after `abort_after` steps."""
    rid = llm.add_request(None, prompt, params, output_kind=kind)
    outs: list = []
    for step in range(1000):
        if outs and outs[-1].finished:
            return outs
        if step == abort_after:
            return [*outs, llm.abort(rid)]
        outs += [o for o in llm.step() if o.request_id == rid]
    raise AssertionError("the request did not finish")


def joined(parts: list, name: str) -> list:
    return [v for part in parts for v in getattr(part, name)]


@pytest.fixture(scope="module")
def stopping(llama_llm) -> SamplingParams:
    """A greedy request with logprobs that a 3-character stop string ends after min_new_tokens."""
    full = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=30, min_new_tokens=30, temperature=0.0))[0]
    at = full.token_text_ends[5]
    stop = next(full.text[i:i + 3] for i in range(at, len(full.text)) if "\ufffd" not in full.text[i:i + 3])
    return SamplingParams(max_new_tokens=30, min_new_tokens=4, temperature=0.0, stop=[stop], logprobs=True,
                          top_logprobs=2)


def test_every_kind_ends_with_the_same_text_tokens_and_logprobs(llama_llm, stopping):
    cumulative = run(llama_llm, OutputKind.CUMULATIVE, stopping)
    whole = cumulative[-1]
    assert whole.finish_reason == FinishReason.STOP and len(cumulative) > 3 and whole.text
    assert len(whole.top_logprobs) == len(whole.logprobs) == len(whole.token_ids) == len(whole.token_text_ends)

    final = run(llama_llm, OutputKind.FINAL, stopping)
    assert len(final) == 1 and final[0].finished
    for name in ("text", "finish_reason", "prompt_token_ids", *PER_TOKEN):
        assert getattr(final[0], name) == getattr(whole, name), name
    assert final[0].delta_text == whole.text and final[0].delta_token_ids == whole.token_ids  # all is new

    delta = run(llama_llm, OutputKind.DELTA, stopping)
    assert [d.finished for d in delta] == [c.finished for c in cumulative]
    assert [d.text for d in delta] == [d.delta_text for d in delta] == [c.delta_text for c in cumulative]
    assert [d.token_ids for d in delta] == [d.delta_token_ids for d in delta] == [c.delta_token_ids for c in cumulative]
    assert "".join(d.text for d in delta) == whole.text
    for name in PER_TOKEN:
        assert joined(delta, name) == getattr(whole, name), name
    assert delta[-1].finish_reason == FinishReason.STOP and all(d.finish_reason is None for d in delta[:-1])


def test_a_final_request_has_no_output_until_its_end_beside_a_streamed_one(llama_llm):
    params = SamplingParams(max_new_tokens=8, min_new_tokens=8, temperature=0.0)
    final = llama_llm.add_request(None, "the cat", params, output_kind=OutputKind.FINAL)
    streamed = llama_llm.add_request(None, "a dog", params)  # CUMULATIVE: the default
    outs = []
    while llama_llm.has_unfinished():
        outs += llama_llm.step()
    mine = [o for o in outs if o.request_id == final]
    assert len(mine) == 1 and mine[0].finished and len(mine[0].token_ids) == 8
    assert len([o for o in outs if o.request_id == streamed]) == 8
    assert llama_llm.generate(["the cat"], params)[0].token_ids == mine[0].token_ids  # generate: FINAL


@pytest.mark.parametrize("kind", list(OutputKind))
def test_an_abort_mid_stream_ends_every_kind_with_the_text_so_far(llama_llm, kind):
    # The stop string never comes: its 4 characters hold the end of the text back until the abort.
    params = SamplingParams(max_new_tokens=40, ignore_eos=True, temperature=0.0, stop=["\x00\x01\x02\x03"],
                            logprobs=True)
    reference = run(llama_llm, OutputKind.CUMULATIVE, params, abort_after=6)[-1]
    assert reference.finish_reason == FinishReason.ABORT and len(reference.token_ids) >= 4
    outs = run(llama_llm, kind, params, abort_after=6)
    last = outs[-1]
    assert last.finished and last.finish_reason == FinishReason.ABORT
    assert sum(o.finished for o in outs) == 1
    if kind is OutputKind.DELTA:
        assert last.text  # the text held back comes with the abort
        assert "".join(o.text for o in outs) == reference.text
        assert joined(outs, "token_ids") == reference.token_ids and joined(outs, "logprobs") == reference.logprobs
    else:
        assert kind is OutputKind.CUMULATIVE or len(outs) == 1
        assert (last.text, last.token_ids, last.logprobs) == (reference.text, reference.token_ids, reference.logprobs)


def test_delta_sends_the_prompt_logprobs_once(llama_llm):
    params = SamplingParams(max_new_tokens=5, min_new_tokens=5, temperature=0.0, prompt_logprobs=2)
    cumulative = run(llama_llm, OutputKind.CUMULATIVE, params)
    whole = cumulative[-1]
    assert len(whole.prompt_logprobs) == len(whole.prompt_token_ids) > 2 and whole.prompt_logprobs[0] is None
    assert all(c.prompt_logprobs == whole.prompt_logprobs for c in cumulative)  # with every output
    delta = run(llama_llm, OutputKind.DELTA, params)
    assert len(delta) == len(cumulative)
    assert (delta[0].prompt_logprobs, delta[0].prompt_top_logprobs) == (whole.prompt_logprobs,
                                                                          whole.prompt_top_logprobs)
    assert all(d.prompt_logprobs is None and d.prompt_top_logprobs is None for d in delta[1:])
    final = run(llama_llm, OutputKind.FINAL, params)[0]
    assert (final.prompt_logprobs, final.prompt_top_logprobs) == (whole.prompt_logprobs, whole.prompt_top_logprobs)


def test_an_unknown_kind_is_refused(llama_llm):
    with pytest.raises(ValueError, match="OutputKind"):
        llama_llm.add_request(None, "the cat", SamplingParams(max_new_tokens=2), output_kind="partial")
    assert run(llama_llm, "delta", SamplingParams(max_new_tokens=2))[-1].finished  # its value is a kind too


# -- the output processor alone, with the built-in model's byte-level BPE tokenizer ---------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(default_model_path()))


def test_an_aborted_delta_request_sends_the_half_character_it_held_back(tokenizer):
    ids = tokenizer.encode("ab 日本語", add_special_tokens=False)
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    params = SamplingParams(max_new_tokens=64)
    delta = feed(tokenizer, OutputKind.DELTA, ids[:cut], params, abort=True)
    assert delta[-1].token_ids == [] and delta[-1].text.endswith("\ufffd")
    assert "".join(d.text for d in delta) == tokenizer.decode(ids[:cut])
    assert feed(tokenizer, OutputKind.FINAL, ids[:cut], params, abort=True)[0].text == tokenizer.decode(ids[:cut])


def test_a_stop_string_never_cuts_text_already_let_out(tokenizer):
    """Below min_new_tokens stop strings do not count, yet text is held back for them; once they
    count, a match in text already let out (a stream has it) is not one."""
    a, b, c, d = (tokenizer.encode(ch, add_special_tokens=False)[0] for ch in "abcd")
    params = SamplingParams(max_new_tokens=4, min_new_tokens=3, stop=["ab"])
    for kind in OutputKind:
        outs = feed(tokenizer, kind, [a, b, c, d], params)
        text = "".join(o.text for o in outs) if kind is OutputKind.DELTA else outs[-1].text
        assert text == "abcd" and outs[-1].finish_reason == FinishReason.LENGTH, kind
    assert feed(tokenizer, OutputKind.CUMULATIVE, [a, b, c, d], params)[1].text == "a"  # let out at the 2nd
    late = feed(tokenizer, OutputKind.CUMULATIVE, [c, d, a, b, c], SamplingParams(max_new_tokens=5, min_new_tokens=3,
                                                                                  stop=["ab"]))
    assert late[-1].text == "cd" and late[-1].finish_reason == FinishReason.STOP  # it counts from the 3rd token
    # A longer stop string holds more text back: a shorter one that ended there below
    # min_new_tokens still does not count once min_new_tokens is reached.
    held = SamplingParams(max_new_tokens=4, min_new_tokens=3, stop=["ab", "zzzzz"])
    assert feed(tokenizer, OutputKind.FINAL, [a, b, c, d], held)[-1].text == "abcd"
