"""Request schemas -> SamplingParams, and the response shapes."""

from __future__ import annotations

import pytest

from shardserve.engine.request import FinishReason, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.serving import openai_protocol as oa
from shardserve.serving.http_errors import APIError
from shardserve.serving.protocol import (
    GenerateParameters,
    GenerateRequest,
    finish_reason,
    to_sampling_params,
)


def params(**kw) -> SamplingParams:
    return to_sampling_params(GenerateParameters(**kw))


def test_tgi_defaults_are_greedy_with_djl_default_length():
    p = params()
    assert p.greedy and p.max_new_tokens == 30


def test_do_sample_rules():
    assert params(do_sample=True).temperature == 1.0
    assert params(do_sample=False, temperature=0.7).greedy  # explicit false wins
    assert params(temperature=0.7).temperature == 0.7  # absent: sampling knobs imply sampling
    assert params(top_k=5).top_k == 5 and not params(top_k=5).greedy


def test_stop_details_and_extensions():
    p = params(stop="###", details=True, ignore_eos=True, min_new_tokens=2, seed=3)
    assert (p.stop, p.logprobs, p.ignore_eos, p.min_new_tokens, p.seed) == (("###",), True, True, 2, 3)


def test_invalid_values_are_400_naming_the_request_field():
    with pytest.raises(APIError) as e:
        params(top_p=1.5)
    assert e.value.status == 400 and e.value.param == "parameters.top_p"
    with pytest.raises(APIError) as e:
        oa.CompletionRequest(prompt="x", max_tokens=0).sampling_params(0, False)
    assert e.value.param == "max_tokens" and e.value.message.startswith("max_tokens must be")


def test_strict_schema_rejects_strings_for_numbers_and_unknown_keys():
    with pytest.raises(ValueError):
        GenerateRequest.model_validate_json('{"inputs": "x", "parameters": {"top_k": "5"}}')
    with pytest.raises(ValueError):
        GenerateRequest.model_validate_json('{"inputs": "x", "parameter": {}}')
    assert GenerateRequest.model_validate_json('{"inputs": "x", "parameters": {"temperature": 1}}')


def _out(reason, tokens):
    return RequestOutput("r", "p", [1], "text", tokens, "", [], True, reason)


def test_tgi_finish_reasons():
    eos = frozenset({2})
    assert finish_reason(_out(FinishReason.LENGTH, [5]), SamplingParams(), eos) == "length"
    assert finish_reason(_out(FinishReason.STOP, [5, 2]), SamplingParams(stop=("x",)), eos) == "eos_token"
    assert finish_reason(_out(FinishReason.STOP, [5, 6]), SamplingParams(stop=("x",)), eos) == "stop_sequence"


def test_presence_and_frequency_penalties_reach_sampling_params():
    params = oa.CompletionRequest(prompt="x", presence_penalty=0.5, frequency_penalty=-1.0).sampling_params(4, False)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -1.0)
    params = to_sampling_params(GenerateParameters(presence_penalty=1.5, frequency_penalty=0.25))
    assert (params.presence_penalty, params.frequency_penalty) == (1.5, 0.25)


def test_openai_unsupported_fields_are_400():
    for kw, field in (({"n": 0}, "n"), ({"n": oa.MAX_CHOICES + 1}, "n"), ({"frequency_penalty": 2.5}, "frequency_penalty"),
                      ({"best_of": 3}, "best_of"),
                      ({"suffix": "x"}, "suffix")):
        with pytest.raises(APIError) as e:
            oa.CompletionRequest(prompt="x", **kw).sampling_params(4, False)
        assert e.value.param == field
    chat = oa.ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}])
    assert chat.messages[0].content[0].text == "a"


def test_openai_logit_bias_reaches_sampling_params_by_token_id():
    chat = oa.ChatCompletionRequest(messages=[{"role": "user", "content": "a"}], logit_bias={"7": 100.0, "3": -2.5})
    assert chat.sampling_params(4, False).logit_bias == ((3, -2.5), (7, 100.0))
    assert oa.CompletionRequest(prompt="x", logit_bias={"7": 5.0}).sampling_params(4, False).logit_bias == ((7, 5.0),)
    assert oa.CompletionRequest(prompt="x").sampling_params(4, False).logit_bias == ()


@pytest.mark.parametrize("bias, message", [
    ({"a": 1.0}, "keys must be token ids"), ({"1.0": 1.0}, "keys must be token ids"),
    ({"-1": 1.0}, "keys must be token ids"), ({"5": 100.5}, "[-100, 100]"), ({"5": float("nan")}, "[-100, 100]"),
    ({"1": 1.0, "01": 2.0}, "each token id once"),  # one id twice: not the last one silently
])
def test_openai_logit_bias_errors_are_400_naming_it(bias, message):
    for request in (oa.CompletionRequest(prompt="x", logit_bias=bias),
                    oa.ChatCompletionRequest(messages=[{"role": "user", "content": "a"}], logit_bias=bias)):
        with pytest.raises(APIError) as e:
            request.sampling_params(4, False)
        assert e.value.param == "logit_bias" and message in str(e.value) and str(e.value).startswith("logit_bias")


def test_openai_usage_and_finish_reason():
    out = _out(FinishReason.ABORT, [4, 5, 6])
    assert oa.usage([out]) == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert oa.openai_finish_reason(FinishReason.LENGTH) == "length"
    assert oa.openai_finish_reason(FinishReason.STOP) == "stop"
    assert oa.openai_finish_reason(None) is None


class _CharTokenizer:
    """Token i decodes to VOCAB[i]; 0 is a special token."""

    VOCAB = ["</s>", "a", "b", "#"]
    all_special_ids = [0]

    def decode(self, ids, skip_special_tokens=True):
        return "".join("" if i == 0 and skip_special_tokens else self.VOCAB[i] for i in ids)


def test_token_events_wait_for_their_text_and_a_stop_strings_tokens_have_none():
    """The engine's own output processor holds back '#' (it may begin '##'); each id's event waits
    with its text, and the tokens of the stop string that ends the request have text ''."""
    from shardserve.engine.output_processor import OutputProcessor
    from shardserve.engine.request import Request, RequestStatus
    from shardserve.serving.protocol import TokenEvents

    tokenizer = _CharTokenizer()
    params = SamplingParams(stop=("##",), max_new_tokens=10, logprobs=True)
    request = Request("r", [1], params)
    outputs = OutputProcessor(tokenizer)
    outputs.add(request)
    events = TokenEvents(tokenizer)
    got = []
    for token in (1, 3, 2, 3, 3):  # a # b # #
        request.output_token_ids.append(token)
        request.logprobs.append(-float(len(request.output_token_ids)))
        if outputs.new_text(request, [token]):
            request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.STOP
        out = outputs.output(request)
        got.append([(t["id"], t["text"], t["log_prob"]) for t in events.take(out)])
    assert got == [[], [(1, "a", -1.0)], [(3, "#", -2.0)], [(2, "b", -3.0)], [(3, "", -4.0), (3, "", -5.0)]]
    assert out.text == "a#b"


def test_a_final_update_without_a_token_still_makes_the_last_event():
    from shardserve.serving.protocol import TokenEvents

    events = TokenEvents(_CharTokenizer())
    first = RequestOutput("r", "p", [1], "a", [1], "a", [1], False, token_text_ends=[1])
    assert [t["text"] for t in events.take(first)] == ["a"]
    last = events.take(RequestOutput("r", "p", [1], "a", [1], "", [], True, FinishReason.ABORT))
    assert last == [{"id": None, "text": "", "log_prob": None, "special": False}]
