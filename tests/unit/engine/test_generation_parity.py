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
