import pytest

from shardserve import LLM
from shardserve.assets import default_model_path
from shardserve.engine.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("max_new_tokens", 0, ">= 1"),
        ("max_new_tokens", 2.5, ">= 1"),
        ("temperature", -0.1, "[0, 100]"),
        ("temperature", float("nan"), "[0, 100]"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("top_k", -2, ">= 0, or -1"),
        ("min_p", -0.01, "[0, 1]"),
        ("min_p", 1.5, "[0, 1]"),
        ("min_p", float("nan"), "[0, 1]"),
        ("min_p", "0.1", "[0, 1]"),
        ("min_p", True, "[0, 1]"),
        ("repetition_penalty", 0.0, "[0.01, 10]"),
        ("seed", -2**63 - 1, "[-2^63, 2^64)"),
        ("seed", 2**64, "[-2^63, 2^64)"),
        ("seed", 1.5, "[-2^63, 2^64)"),
        ("stop", [""], "non-empty strings"),
        ("stop_token_ids", [-1], "integers >= 0"),
        ("stop", 5, "non-empty strings"),
        ("stop_token_ids", 5, "integers >= 0"),
        ("logprobs", "yes", "boolean"),
        ("min_new_tokens", 50, "max_new_tokens=16"),
        ("logit_bias", {-1: 1.0}, "token ids (integers >= 0)"),
        ("logit_bias", {"5": 1.0}, "token ids (integers >= 0)"),
        ("logit_bias", {True: 1.0}, "token ids (integers >= 0)"),
        ("logit_bias", {5: 100.5}, "[-100, 100]"),
        ("logit_bias", {5: -101}, "[-100, 100]"),
        ("logit_bias", {5: float("nan")}, "[-100, 100]"),
        ("logit_bias", {5: True}, "[-100, 100]"),
        ("logit_bias", {5: "1"}, "[-100, 100]"),
        ("logit_bias", 5, "a map of token ids"),
        ("logit_bias", [(5,)], "a map of token ids"),
        ("logit_bias", [(5, 1.0), (5, 2.0)], "each token id once"),
    ],
)
def test_invalid_values_name_the_field_and_the_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value})
    assert field in str(err.value) and allowed in str(err.value)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="END", stop_token_ids=[3])
    assert p.stop == ("END",) and p.stop_token_ids == (3,)
    assert not p.greedy
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    # logits / 1e-38 would overflow: temperatures that small decode greedily
    assert SamplingParams(temperature=1e-38).greedy and not SamplingParams(temperature=1e-3).greedy


def test_logit_bias_is_stored_as_pairs_sorted_by_token_id():
    """A dict or pairs, stored alike: hashable (the Accelerate engine groups requests by it)."""
    p = SamplingParams(logit_bias={7: 100, 3: -2.5})
    assert p.logit_bias == ((3, -2.5), (7, 100.0)) and SamplingParams().logit_bias == ()
    assert p == SamplingParams(logit_bias=[(7, 100.0), [3, -2.5]])
    assert hash(p) == hash(SamplingParams(logit_bias=p.logit_bias))
    assert SamplingParams(logit_bias=None).logit_bias == () == SamplingParams(logit_bias={}).logit_bias


def test_top_k_minus_one_disables_it_as_zero_does():
    """vLLM and its clients send -1 for "no top-k": stored as 0, so no engine sees -1."""
    assert SamplingParams(top_k=-1).top_k == 0 == SamplingParams(top_k=0).top_k
    assert SamplingParams(top_k=-1) == SamplingParams()


def test_min_p_takes_its_whole_range_and_is_off_by_default():
    assert SamplingParams().min_p == 0.0
    assert [SamplingParams(min_p=v).min_p for v in (0, 0.05, 1, 1.0)] == [0, 0.05, 1, 1.0]


@pytest.mark.parametrize("seed", [-1, -2**63, 2**64 - 1])
def test_any_64_bit_seed_is_accepted(seed):
    assert SamplingParams(seed=seed).seed == seed


@pytest.fixture(scope="module")
def default_llm():
    with LLM(str(default_model_path()), dtype="fp32") as llm:
        yield llm


def test_a_negative_seed_samples_reproducibly_in_the_engine(default_llm):
    """vLLM takes any 64-bit seed; the sampler's torch.Generator reads a negative one as
    seed + 2^64."""
    def tokens(seed: int) -> list[int]:
        params = SamplingParams(max_new_tokens=16, min_new_tokens=16, temperature=1.0, top_k=-1, seed=seed)
        return default_llm.generate(["It was a fine morning, and"], params)[0].token_ids

    first = tokens(-1)
    assert len(first) == 16
    assert tokens(-1) == first
    assert tokens(2**64 - 1) == first  # torch.Generator.manual_seed's reading of -1
    assert tokens(7) != first
    assert tokens(-2**63) != first


def test_ends_on_is_membership_in_the_ending_ids():
    for params in (SamplingParams(), SamplingParams(stop_token_ids=[7]), SamplingParams(ignore_eos=True, stop_token_ids=[7]),
                   SamplingParams(ignore_eos=True)):
        for token in (1, 2, 7, 9):
            assert params.ends_on(token, (2, 9)) == (token in params.ending_token_ids((2, 9))), (params, token)


def test_top_k_beyond_int64_is_refused_here_not_in_the_engine_step():
    """The sampler holds top_k in int64 tensors: a larger one used to pass and stop the engine."""
    assert SamplingParams(top_k=2**63 - 1).top_k == 2**63 - 1
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 0, or -1 .* at most 2\^63 - 1"):
        SamplingParams(top_k=2**63)


def test_a_repetition_penalty_that_would_overflow_the_logits_is_refused():
    """A positive logit is divided by it: 5e-324 made it inf and the probabilities NaN."""
    assert SamplingParams(repetition_penalty=0.01).repetition_penalty == 0.01
    for tiny in (5e-324, 1e-6, 0.0099):
        with pytest.raises(ValueError, match=r"repetition_penalty must be a number in \[0.01, 10\]"):
            SamplingParams(repetition_penalty=tiny)
