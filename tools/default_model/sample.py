#!/usr/bin/env python3
"""Sample the built-in default model with plain transformers (offline), as a quick check.

python tools/default_model/sample.py "The old man" "It was a fine morning, and"
python tools/default_model/sample.py --model /tmp/other-dir --seed 3 "My dear sister,"
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parents[1] / "src" / "shardserve" / "assets" / "default-model"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="*", default=["The old man"])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--greedy", action="store_true", help="argmax instead of the sampling config")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    for i, prompt in enumerate(args.prompts):
        torch.manual_seed(args.seed + i)
        enc = tok(prompt, return_tensors="pt")
        kw = {"do_sample": False, "repetition_penalty": 1.0} if args.greedy else {}
        t0 = time.time()
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, **kw)
        new = ids[0, enc["input_ids"].shape[1] :]
        text = tok.decode(new, skip_special_tokens=True)
        print(f"--- {prompt!r} ({len(new)} tokens, {time.time() - t0:.2f}s)\n{prompt}{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
