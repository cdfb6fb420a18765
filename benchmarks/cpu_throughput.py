"""CPU tokens/s of the built-in default model at batch 1 and 8, next to transformers.generate.

    python benchmarks/cpu_throughput.py [--model DIR] [--new-tokens 128] [--threads 2]

Both engines run greedy decoding of the same prompts for the same number of new tokens
(EOS ignored) in the same process, one after the other; the best of --reps runs is reported.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from shardserve import LLM, SamplingParams

PROMPTS = [
    "The old man looked at the sea",
    "Once upon a time",
    "She opened the door and",
    "In the morning the village was",
    "He said that the king",
    "The road to the city",
    "It was a dark and stormy night",
    "They walked along the river",
]


def ours(llm: LLM, prompts: list[str], new_tokens: int) -> float:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == new_tokens for o in outs)
    return len(prompts) * new_tokens / elapsed


def transformers_generate(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return len(prompts) * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    llm = LLM(args.model, dtype="fp32")
    model_dir = llm.config.model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {model_dir}")
    print(f"{'batch':>5} {'shardserve tok/s':>17} {'transformers tok/s':>19} {'ratio':>6}")
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        ours(llm, prompts, 8)  # warm-up
        a = max(ours(llm, prompts, args.new_tokens) for _ in range(args.reps))
        b = max(transformers_generate(hf, llm.tokenizer, prompts, args.new_tokens) for _ in range(args.reps))
        print(f"{batch:>5} {a:>17.1f} {b:>19.1f} {a / b:>6.2f}")
    llm.shutdown()


if __name__ == "__main__":
    main()
