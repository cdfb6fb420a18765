import pytest

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
        ("top_k", -1, ">= 0"),
        ("repetition_penalty", 0.0, "(0, 10]"),
        ("seed", -3, "2^63"),
        ("stop", [""], "non-empty strings"),
        ("stop_token_ids", [-1], "integers >= 0"),
        ("stop", 5, "non-empty strings"),
        ("stop_token_ids", 5, "integers >= 0"),
        ("logprobs", "yes", "boolean"),
        ("min_new_tokens", 50, "max_new_tokens=16"),
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
