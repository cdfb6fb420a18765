import pytest
import torch

from shardserve import LLM


@pytest.fixture(scope="session")
def hf_greedy():
    """Greedy continuation by transformers itself, one prompt at a time (no padding involved)."""
    from transformers import AutoModelForCausalLM

    models = {}

    def run(model_dir, prompt_ids: list[int], n: int, **generate_options) -> list[int]:
        key = str(model_dir)
        if key not in models:
            models[key] = AutoModelForCausalLM.from_pretrained(key, dtype=torch.float32).eval()
        with torch.no_grad():
            ids = torch.tensor([prompt_ids])
            # An explicit mask: a pad id that equals a real token (e.g. BOS) must not mask it.
            out = models[key].generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=models[key].config.eos_token_id, **generate_options,
            )
        return out[0, len(prompt_ids):].tolist()

    return run


@pytest.fixture(scope="session")
def llama_llm(tiny_checkpoint):
    llm = LLM(str(tiny_checkpoint("llama")), dtype="fp32", max_num_seqs=16)
    yield llm
    llm.shutdown()
