"""The built-in model: found without a path, served by our engine exactly as transformers runs it."""

import torch

from shardserve import LLM, SamplingParams
from shardserve.assets import default_model_path


def test_default_model_ships_and_matches_transformers():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with LLM(dtype="fp32") as llm:
        assert llm.config.model == str(path)
        params = SamplingParams(max_new_tokens=24, min_new_tokens=24, temperature=0.0, logprobs=True)
        prompts = ["The old man", "It was a fine morning, and"]
        for prompt, out in zip(prompts, llm.generate(prompts, params)):
            ids = llm.tokenizer.encode(prompt)
            # Teacher-forced: at every step our token is transformers' argmax on the same prefix,
            # with the same log-probability. (Free-running comparisons of a trained model can
            # part ways at an exact near-tie; this checks every step independently.)
            with torch.no_grad():
                logits = hf(torch.tensor([ids + out.token_ids])).logits[0, len(ids) - 1 : -1]
            logprobs = torch.log_softmax(logits, -1)
            assert out.token_ids == logits.argmax(-1).tolist()
            chosen = logprobs.gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(out.logprobs), chosen, atol=1e-4)
            assert out.text.strip()
