"""Our engine's greedy continuations equal transformers' on the same checkpoints."""

import pytest

from shardserve import LLM, SamplingParams

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a king who",
    "Hi",
]


@pytest.mark.parametrize("arch", ["opt", "opt-postln", "opt-proj", "bloom", "llama", "llama-linear-rope", "mistral", "qwen2"])
def test_greedy_32_tokens_equal_transformers(arch, tiny_checkpoint, hf_greedy):
    path = tiny_checkpoint(arch)
    with LLM(str(path), dtype="fp32") as llm:
        params = SamplingParams(max_new_tokens=32, min_new_tokens=32, temperature=0.0)
        outs = llm.generate(PROMPTS, params)
        for prompt, out in zip(PROMPTS, outs):
            expected = hf_greedy(path, llm.tokenizer.encode(prompt), 32)
            assert out.token_ids == expected, f"{arch}: {prompt!r}"
            assert out.finish_reason == "length"


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("penalty", [1.3, 0.6])
def test_repetition_penalty_equals_transformers(penalty, async_scheduling, tiny_checkpoint, hf_greedy):
    """The sampler's per-request seen tokens (the prompt once, then each newest input token, in
    flight or not) penalise exactly what HF's RepetitionPenaltyLogitsProcessor does."""
    path = tiny_checkpoint("llama")
    with LLM(str(path), dtype="fp32", async_scheduling=async_scheduling) as llm:
        params = SamplingParams(max_new_tokens=24, min_new_tokens=24, temperature=0.0, repetition_penalty=penalty)
        for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
            expected = hf_greedy(path, llm.tokenizer.encode(prompt), 24, repetition_penalty=penalty)
            assert out.token_ids == expected, f"{prompt!r}"


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("repetition, presence, frequency", [(1.0, 0.8, 0.6), (1.2, -0.5, 0.4)])
def test_presence_and_frequency_penalties_equal_a_transformers_processor(
    repetition, presence, frequency, async_scheduling, tiny_checkpoint, hf_greedy
):
    from transformers import LogitsProcessorList

    from shardserve.serving.accelerate_sampling import OutputPenalties  # the definition

    path = tiny_checkpoint("llama")
    with LLM(str(path), dtype="fp32", async_scheduling=async_scheduling) as llm:
        params = SamplingParams(max_new_tokens=24, min_new_tokens=24, temperature=0.0, repetition_penalty=repetition,
                                presence_penalty=presence, frequency_penalty=frequency)
        for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
            ids = llm.tokenizer.encode(prompt)
            processor = LogitsProcessorList([OutputPenalties(len(ids), presence, frequency)])
            expected = hf_greedy(path, ids, 24, repetition_penalty=repetition, logits_processor=processor)
            assert out.token_ids == expected, f"{prompt!r}"
