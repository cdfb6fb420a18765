"""DJL / TGI `parameters.min_p`: validated under the request's name, carried into SamplingParams,
and honoured over HTTP by the Accelerate engine (tiny Llama)."""

from __future__ import annotations

import pytest

from helpers.served_app import djl_token_ids, served
from shardserve.serving.http_errors import APIError
from shardserve.serving.protocol import GenerateParameters, to_sampling_params


def test_min_p_reaches_sampling_params_and_asks_for_sampling():
    params = to_sampling_params(GenerateParameters(min_p=0.05))
    assert params.min_p == 0.05 and not params.greedy  # like top_p: giving it means sampling
    assert to_sampling_params(GenerateParameters(do_sample=False, min_p=0.05)).greedy
    assert to_sampling_params(GenerateParameters(temperature=0.8, min_p=1)).min_p == 1
    assert to_sampling_params(GenerateParameters()).min_p == 0.0


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_min_p_out_of_range_is_a_400_naming_the_parameter(value):
    with pytest.raises(APIError) as e:
        to_sampling_params(GenerateParameters(min_p=value))
    assert e.value.status == 400 and e.value.param == "parameters.min_p"
    assert e.value.message.startswith("parameters.min_p must be a number in [0, 1]")


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    artifact = tmp_path_factory.mktemp("djl-min-p") / "acc"
    artifact.mkdir()
    (artifact / "serving.properties").write_text(
        f"engine=Accelerate\noption.model_id={tiny_checkpoint('llama')}\noption.dtype=fp32\n")
    with served((("acc", str(artifact)),)) as c:
        yield c


def test_min_p_1_over_http_decodes_as_greedy(client):
    """At a high temperature only min_p = 1 (keep the top token alone) gives the greedy text."""
    greedy = djl_token_ids(client, "acc", {"do_sample": False})
    assert djl_token_ids(client, "acc", {"temperature": 3.0, "seed": 4, "min_p": 1.0}) == greedy
    assert djl_token_ids(client, "acc", {"temperature": 3.0, "seed": 4}) != greedy  # without it: a draw
    r = client.post("/predictions/acc", json={"inputs": "x", "parameters": {"min_p": "0.5"}})
    assert r.status_code == 400 and "parameters.min_p" in r.text
