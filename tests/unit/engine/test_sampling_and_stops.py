"""Sampling through the whole engine: seeds, top_k=1, min_p, logit_bias, stop strings, bad input."""

from dataclasses import replace

import pytest

from helpers.min_p_gaps import assert_kept_by_min_p, assert_min_p_bites
from shardserve import SamplingParams
from shardserve.engine.request import FinishReason

OTHERS = ["filler one", "another filler prompt that is longer", "x"]


def test_seed_gives_same_text_whatever_the_batch(llama_llm):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    alone = llama_llm.generate(["Once upon a time"], params)[0].token_ids
    noisy = SamplingParams(max_new_tokens=15, temperature=1.2)
    batch = llama_llm.generate(OTHERS[:2] + ["Once upon a time"] + OTHERS[2:], [noisy, noisy, params, noisy])
    assert batch[2].token_ids == alone
    other_seed = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=99)
    assert llama_llm.generate(["Once upon a time"], other_seed)[0].token_ids != alone


def test_top_k_1_and_a_vanishing_temperature_equal_greedy(llama_llm):
    greedy = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=16, temperature=0.0))[0]
    top1 = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=16, temperature=1.5, top_k=1))[0]
    assert top1.token_ids == greedy.token_ids
    tiny = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=16, temperature=1e-38, seed=3))[0]
    assert tiny.token_ids == greedy.token_ids


def test_stop_string_is_cut_and_ends_the_request(llama_llm):
    params = SamplingParams(max_new_tokens=40, min_new_tokens=40, temperature=0.0)
    full = llama_llm.generate(["the cat"], params)[0].text
    assert len(full) > 12
    stop = full[5:8]
    out = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=40, temperature=0.0, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.index(stop)]
    assert stop not in out.text


def test_streamed_deltas_add_up_and_never_show_the_stop_string(llama_llm):
    params = SamplingParams(max_new_tokens=30, min_new_tokens=30, temperature=0.0)
    full = llama_llm.generate(["in the beginning"], params)[0].text
    stop = full[10:14]
    deltas = [o.delta_text for o in llama_llm.stream("in the beginning", SamplingParams(max_new_tokens=30, temperature=0.0, stop=stop))]
    assert "".join(deltas) == full[: full.index(stop)]
    for i in range(len(deltas)):
        assert stop not in "".join(deltas[: i + 1])


def test_max_new_tokens_min_new_tokens_and_logprobs(llama_llm):
    out = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=7, temperature=0.0, logprobs=True, ignore_eos=True))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    assert len(out.logprobs) == 7 and all(lp <= 0.0 for lp in out.logprobs)


def test_stop_token_ids_finish_with_stop(llama_llm):
    greedy = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0.0))[0]
    target = greedy.token_ids[3]
    out = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[target]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == greedy.token_ids[: greedy.token_ids.index(target) + 1]


def test_stop_token_ids_past_the_vocabulary_are_refused_and_the_engine_serves_on(llama_llm):
    vocab = llama_llm.model_config.vocab_size
    with pytest.raises(ValueError, match=rf"stop_token_ids must be integers in \[0, {vocab}\)"):
        llama_llm.generate(["hello"], SamplingParams(stop_token_ids=[vocab], min_new_tokens=2))
    assert len(llama_llm.generate(["hello"], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].token_ids) == 3


def test_logit_bias_ids_past_the_vocabulary_are_refused_by_name(llama_llm):
    vocab = llama_llm.model_config.vocab_size
    refused = rf"logit_bias token ids must be integers in \[0, {vocab}\), got \[{vocab}\]"
    with pytest.raises(ValueError, match=refused) as e:
        llama_llm.generate(["hello"], SamplingParams(logit_bias={vocab - 1: 1.0, vocab: 1.0}))
    assert e.value.field == "logit_bias"
    # Prompt ids encoded beforehand (as AsyncEngine does, with encode()) skip encode_prompt: the
    # params' ids are checked all the same, and the engine serves on.
    ids = llama_llm.encode("hello", SamplingParams())
    for bad in (SamplingParams(logit_bias={vocab: 1.0}), SamplingParams(stop_token_ids=[vocab])):
        with pytest.raises(ValueError, match=rf"must be integers in \[0, {vocab}\)"):
            llama_llm.add_request("bad", "hello", bad, prompt_token_ids=ids)
    assert len(llama_llm.generate(["hello"], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].token_ids) == 3


def test_logit_bias_forces_and_bans_tokens_beside_an_unbiased_request(llama_llm):
    """Greedy, in one batch: +100 on a token the model does not pick here makes it every token,
    -100 on the greedy first token keeps it out, and an unbiased request decodes as alone. The
    logprobs stay the model's own: the forced token's is below the raw top one's."""
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=1)
    greedy = llama_llm.generate(["the cat"], params)[0]
    forced_id = next(t for t in range(3, llama_llm.model_config.vocab_size) if t not in greedy.token_ids)
    banned_id = greedy.token_ids[0]
    forced, banned, plain = llama_llm.generate(["the cat"] * 3, [
        replace(params, logit_bias={forced_id: 100.0}), replace(params, logit_bias={banned_id: -100.0}), params])
    assert forced.token_ids == [forced_id] * 6
    assert banned_id not in banned.token_ids and banned.token_ids != greedy.token_ids
    assert plain.token_ids == greedy.token_ids and plain.logprobs == pytest.approx(greedy.logprobs, abs=1e-5)
    assert forced.top_logprobs[0][0][0] == banned_id  # the raw distribution's top token
    assert forced.logprobs[0] < forced.top_logprobs[0][0][1]


def test_generate_returns_its_own_requests_beside_one_added_before(llama_llm):
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    alone = llama_llm.generate(["the cat"], params)[0].token_ids
    llama_llm.add_request("earlier", "a dog ran", SamplingParams(max_new_tokens=1))
    outs = llama_llm.generate(["the cat"], params)
    assert len(outs) == 1 and outs[0].token_ids == alone and outs[0].request_id != "earlier"
    while llama_llm.has_unfinished():  # the earlier request still finishes
        llama_llm.step()


def test_prompt_longer_than_the_model_is_refused_with_both_numbers(llama_llm):
    with pytest.raises(ValueError, match=r"max_new_tokens 10 .*> max_model_len 256"):
        llama_llm.generate(["word " * 300], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="empty"):
        llama_llm.generate([[]], SamplingParams())


def test_a_step_that_raises_stops_the_engine_with_the_cause(tiny_checkpoint, monkeypatch):
    """A failed step leaves its requests half done: later calls say so, naming the first error."""
    from shardserve import LLM
    from shardserve.errors import EngineDeadError

    with LLM(str(tiny_checkpoint("llama")), dtype="fp32") as llm:
        real_call = llm.executor.call

        def call(method, *args):
            if method == "execute_model":
                raise RuntimeError("boom")
            return real_call(method, *args)

        monkeypatch.setattr(llm.executor, "call", call)
        with pytest.raises(RuntimeError, match="boom"):
            llm.generate(["hello"], SamplingParams(max_new_tokens=3))
        monkeypatch.setattr(llm.executor, "call", real_call)
        for later in (lambda: llm.generate(["hello"], SamplingParams(max_new_tokens=3)),
                      lambda: llm.add_request(None, "hello")):
            with pytest.raises(EngineDeadError, match="earlier step.*RuntimeError: boom"):
                later()


def test_the_text_of_the_stop_token_is_left_out_as_in_vllm(llama_llm):
    greedy = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0.0))[0]
    k = 3
    target = greedy.token_ids[k]
    k = greedy.token_ids.index(target)  # its first occurrence ends the request
    out = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[target]))[0]
    assert out.token_ids == greedy.token_ids[: k + 1]  # the id stays
    assert llama_llm.tokenizer.decode([target]) != ""  # else the check below could not fail
    assert out.text == llama_llm.tokenizer.decode(greedy.token_ids[:k], skip_special_tokens=True)


def test_stop_strings_count_only_from_min_new_tokens_on(llama_llm):
    full = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=40, min_new_tokens=40, temperature=0.0))[0]
    at20 = full.token_text_ends[19]  # where the 20th token's text ends
    # A string found in the first tokens' text and again after the 20th token's.
    stop = next(full.text[i : i + 3] for i in range(at20) if "\ufffd" not in full.text[i : i + 3]
                and full.text.find(full.text[i : i + 3], at20) >= 0)
    early = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=40, temperature=0.0, stop=[stop]))[0]
    assert len(early.token_ids) < 20  # the stop string ends it early without min_new_tokens
    out = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=40, min_new_tokens=20, temperature=0.0,
                                                         stop=[stop]))[0]
    assert 20 <= len(out.token_ids) < 40 and out.finish_reason == FinishReason.STOP  # it still stops, later
    # Cut at the first match that ends in the text of the 20th token or later.
    cut = next(j for j in range(len(full.text)) if full.text.startswith(stop, j)
               and j + len(stop) > full.token_text_ends[18])
    assert out.text == full.text[:cut]


def test_top_logprobs_come_with_every_token(llama_llm):
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=3)
    out = llama_llm.generate(["hello"], params)[0]
    assert len(out.top_logprobs) == len(out.token_ids) == len(out.logprobs) == 6
    for token, lp, top in zip(out.token_ids, out.logprobs, out.top_logprobs, strict=True):
        assert len(top) == 3 and top[0][0] == token and top[0][1] == pytest.approx(lp)  # greedy: the first
        assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    plain = llama_llm.generate(["hello"], SamplingParams(max_new_tokens=6, temperature=0.0, logprobs=True))[0]
    assert plain.top_logprobs is None
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=3)  # without logprobs


def test_min_p_per_request_in_one_batch(llama_llm):
    """Requests with min_p 0, 0.05, 0.5 and 1 decode together: each token is at least min_p times
    as likely as the top one at temperature T (raw log-probability gap >= T * log(min_p)), and
    min_p = 1 decodes as greedy does."""
    temperature, min_ps = 3.0, (0.0, 0.05, 0.5, 1.0)
    greedy = llama_llm.generate(["the cat"], SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True))[0]
    params = [SamplingParams(max_new_tokens=12, temperature=temperature, min_p=m, seed=5 + i, ignore_eos=True,
                             logprobs=True, top_logprobs=1) for i, m in enumerate(min_ps)]
    outs = llama_llm.generate(["the cat"] * 4, params)
    assert outs[3].token_ids == greedy.token_ids
    assert_kept_by_min_p(outs[1], temperature, 0.05)
    assert_kept_by_min_p(outs[2], temperature, 0.5)
    assert_min_p_bites(outs[0], temperature, 0.5)
