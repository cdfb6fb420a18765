#!/usr/bin/env python3
"""Train shardserve's built-in default model: a tiny Llama on four Jane Austen novels, on the CPU.

    python tools/default_model/train.py                   # 13-22 min on 2 cores, writes the assets
    python tools/default_model/train.py --minutes 1 --out /tmp/dm-smoke   # quick smoke run

Steps: (1) clean the public-domain texts in tools/default_model/corpus/ into chapters of
paragraphs, (2) train a byte-level BPE tokenizer (tokenizers), (3) train a LlamaForCausalLM
(transformers) with AdamW and a warmup + cosine schedule that ends at --max-tokens (3.2 M, about
5 epochs: validation loss rises after that) or at the --minutes wall-clock cap, whichever comes
first, (4) save it in bfloat16 as safetensors with the tokenizer, generation_config.json and a
MODEL_CARD.md into src/shardserve/assets/default-model/ (or --out), then reload it from there
and sample a few prompts as a check.

Everything is seeded; a run that reaches --max-tokens before the time cap takes the same steps
on any machine (up to floating-point differences between CPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CORPUS_DIR = HERE / "corpus"
DEFAULT_OUT = REPO / "src" / "shardserve" / "assets" / "default-model"

# (file in corpus/, title, year of first publication)
BOOKS = (
    ("prideprejudice.txt", "Pride and Prejudice", 1813),
    ("sensesensibility.txt", "Sense and Sensibility", 1811),
    ("persuasion.txt", "Persuasion", 1817),
    ("northangerabbey.txt", "Northanger Abbey", 1817),
)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2. Byte-level BPE never needs <unk>.
PARA_SEP = "\n\n"
SAMPLE_PROMPTS = ("The old man", "It was a fine morning, and", "My dear sister,")

_CHAPTER_RE = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
_DROP_RE = re.compile(r"^\s*(volume\s+[ivx\d]+\.?|the end|finis)\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------------------- corpus


def clean_book(text: str) -> list[list[str]]:
    """Book text -> chapters, each a list of one-line paragraphs.

    Drops everything before the first chapter heading (title page, preface), chapter and volume
    headings and the closing "THE END"/"Finis"; unwraps the fixed-width lines; removes the
    `_underscore_` italics markup of the Gutenberg texts.
    """
    chapters: list[list[str]] = []
    para: list[str] = []

    def flush() -> None:
        if para and chapters:
            p = " ".join(para)
            p = re.sub(r"_([^_]+)_", r"\1", p).replace("_", "")
            p = re.sub(r"\s+", " ", p).strip()
            if re.search(r"[A-Za-z]", p):  # drops "* * * * *" scene breaks
                chapters[-1].append(p)
        para.clear()

    for line in text.splitlines():
        if _CHAPTER_RE.match(line):
            flush()
            chapters.append([])
        elif _DROP_RE.match(line) or not line.strip():
            flush()
        else:
            para.append(line.strip())
    flush()
    return [c for c in chapters if c]


def load_corpus() -> list[tuple[str, int, list[str]]]:
    """[(book title, chapter number, paragraphs)] for every chapter of every book."""
    docs = []
    for fname, title, _year in BOOKS:
        chapters = clean_book((CORPUS_DIR / fname).read_text(encoding="utf-8"))
        docs.extend((title, i + 1, paras) for i, paras in enumerate(chapters))
    return docs


def is_heldout(chapter_no: int) -> bool:
    return chapter_no % 20 == 10  # chapters 10, 30, 50, ... of each book: ~5% for validation


# ------------------------------------------------------------------------------------ tokenizer


def train_tokenizer(docs, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((PARA_SEP.join(paras) for _, _, paras in docs), trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama: <s> in front of every encoded text, no </s> at the end.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def wrap_tokenizer(tok, max_len: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )


# ------------------------------------------------------------------------------------------ data


@dataclass
class Split:
    stream: list[int]  # <s> chapter </s> <s> chapter </s> ...
    starts: list[int]  # stream positions where a paragraph starts
    docs: int


def build_split(tok, docs) -> Split:
    sep = tok.encode(PARA_SEP, add_special_tokens=False).ids
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    stream: list[int] = []
    starts: list[int] = []
    for _, _, paras in docs:
        stream.append(bos)
        for j, enc in enumerate(tok.encode_batch(paras, add_special_tokens=False)):
            if j:
                stream.extend(sep)
            starts.append(len(stream))
            stream.extend(enc.ids)
        stream.append(eos)
    return Split(stream, starts, len(docs))


def make_batch(split: Split, batch: int, seq_len: int, bos: int, rng: random.Random, torch, device):
    """[batch, seq_len] windows, each `<s>` + text from a paragraph start onwards.

    Used as both input_ids and labels: transformers' causal-LM loss shifts the labels itself.
    """
    n = len(split.stream)
    rows = []
    for _ in range(batch):
        while True:
            p = rng.choice(split.starts)
            if p + seq_len - 1 <= n:
                break
        rows.append([bos] + split.stream[p : p + seq_len - 1])
    return torch.tensor(rows, dtype=torch.long, device=device)


# ----------------------------------------------------------------------------------------- model


def build_model(args, tok, torch):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,  # GQA on purpose: the engine must handle it
        head_dim=args.hidden // args.heads,
        max_position_embeddings=args.max_positions,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    model.tie_weights()
    return model


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    seen = set()
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, progress: float, args) -> float:
    """Linear warmup over steps, then cosine down to min_lr as progress goes from 0 to 1."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * progress))


def evaluate(model, batches, torch) -> float:
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=x, labels=x).loss.item() for x in batches]
    model.train()
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------------------------ main


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=22.0, help="training time budget (a cap)")
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=3_200_000,
        help="stop after this many training tokens (~5.4 epochs; more overfits this corpus)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--stats",
        type=Path,
        default=None,
        help="where to write run statistics "
        "(default: tools/default_model/last_run.json for the default --out)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (machine is shared)")
    ap.add_argument("--device", default="cpu", help="cpu (the reference) or e.g. cuda")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every-min", type=float, default=2.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument(
        "--max-steps", type=int, default=0, help="stop after N steps; the schedule then ends there"
    )
    ap.add_argument("--eval-every-steps", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    t_start = time.time()

    # 1. corpus
    docs = load_corpus()
    train_docs = [d for d in docs if not is_heldout(d[1])]
    val_docs = [d for d in docs if is_heldout(d[1])]
    n_bytes = sum(len(PARA_SEP.join(p).encode()) for _, _, p in docs)
    log(f"corpus: {len(docs)} chapters ({len(val_docs)} held out), {n_bytes / 1e6:.2f} MB of text")

    # 2. tokenizer (trained on the training chapters only)
    tok = train_tokenizer(train_docs, args.vocab_size)
    train, val = build_split(tok, train_docs), build_split(tok, val_docs)
    log(
        f"tokenizer: vocab {tok.get_vocab_size()}; train {len(train.stream):,} tokens "
        f"({n_bytes / (len(train.stream) + len(val.stream)):.2f} bytes/token), "
        f"val {len(val.stream):,} tokens"
    )

    # 3. model + training
    device = torch.device(args.device)
    model = build_model(args, tok, torch).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    log(f"model: LlamaForCausalLM {n_params:,} parameters; {model.config.num_hidden_layers} layers")
    opt = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), eps=1e-8
    )
    bos = tok.token_to_id(BOS)
    data_rng = random.Random(args.seed)
    val_rng = random.Random(args.seed + 1)
    val_batches = [
        make_batch(val, args.batch, args.seq_len, bos, val_rng, torch, device) for _ in range(4)
    ]

    budget = args.minutes * 60.0
    model.train()
    t0 = time.time()
    step, tokens_seen = 0, 0
    recent: list[float] = []
    history = []
    next_eval = args.eval_every_min * 60.0
    val_loss = evaluate(model, val_batches, torch)
    log(f"step 0 val_loss {val_loss:.3f}")
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or tokens_seen >= args.max_tokens:
            break
        if args.max_steps and step >= args.max_steps:
            break
        # whichever runs out first - time, tokens or steps - ends the cosine schedule
        progress = max(elapsed / budget, tokens_seen / args.max_tokens)
        if args.max_steps:
            progress = max(progress, step / args.max_steps)
        lr = lr_at(step, progress, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x = make_batch(train, args.batch, args.seq_len, bos, data_rng, torch, device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        recent.append(loss.item())
        recent = recent[-50:]
        if step % args.log_every == 0:
            el = time.time() - t0
            log(
                f"step {step} | {el / 60:5.1f} min | lr {lr:.2e} | loss {loss.item():.3f} "
                f"(avg50 {sum(recent) / len(recent):.3f}) | {tokens_seen / el:,.0f} tok/s"
            )
        by_steps = args.eval_every_steps and step % args.eval_every_steps == 0
        if by_steps or time.time() - t0 >= next_eval:
            while next_eval <= time.time() - t0:
                next_eval += args.eval_every_min * 60.0
            val_loss = evaluate(model, val_batches, torch)
            history.append((step, round(sum(recent) / len(recent), 4), round(val_loss, 4)))
            log(f"step {step} val_loss {val_loss:.3f}")
    train_minutes = (time.time() - t0) / 60.0
    final_train = sum(recent) / max(len(recent), 1)
    val_loss = evaluate(model, val_batches, torch)
    history.append((step, round(final_train, 4), round(val_loss, 4)))
    log(
        f"done: {step} steps, {tokens_seen:,} tokens ({tokens_seen / len(train.stream):.1f} "
        f"epochs) in {train_minutes:.1f} min; train loss (last 50) {final_train:.3f}, "
        f"val loss {val_loss:.3f}"
    )

    # 4. save (bf16 safetensors + tokenizer + generation config), then reload and sample
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = model.to("cpu", torch.bfloat16)
    model.config.use_cache = True
    gen = transformers.GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        repetition_penalty=1.1,
        max_new_tokens=64,
    )
    model.generation_config = gen
    save_kw = {}
    import inspect

    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kw["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(out, **save_kw)
    hf_tok = wrap_tokenizer(tok, args.max_positions)
    hf_tok.save_pretrained(out)
    assert (out / "model.safetensors").exists(), "expected a single model.safetensors"
    add_compat_keys(out)

    samples = sample_from(out, SAMPLE_PROMPTS, seed=args.seed, max_new_tokens=48)
    for prompt, text in samples:
        log(f"sample: {prompt!r} -> {text!r}")

    stats = {
        "params": n_params,
        "vocab_size": tok.get_vocab_size(),
        "corpus_mb": round(n_bytes / 1e6, 2),
        "train_tokens": len(train.stream),
        "val_tokens": len(val.stream),
        "steps": step,
        "tokens_seen": tokens_seen,
        "epochs": round(tokens_seen / len(train.stream), 2),
        "train_minutes": round(train_minutes, 1),
        "tokens_per_s": round(tokens_seen / (train_minutes * 60.0)),
        "threads": args.threads,
        "device": args.device,
        "command": "python tools/default_model/train.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "final_train_loss": round(final_train, 3),
        "final_val_loss": round(val_loss, 3),
        "history": history,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    write_model_card(out, args, stats, samples)
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"wrote {out} ({size / 1e6:.2f} MB) in {(time.time() - t_start) / 60:.1f} min total")
    return 0


def add_compat_keys(out: Path) -> None:
    """Also write the transformers 4.x spellings, so older readers load the same model.

    transformers 5 writes `dtype`, `rope_parameters` and tokenizer_class `TokenizersBackend`;
    4.x (and shardserve's ModelConfig) read `torch_dtype` and `rope_theta`, and know the
    tokenizer class as `PreTrainedTokenizerFast` (5.x maps that name to the same class).
    """
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    cfg.setdefault("torch_dtype", dtype)
    cfg.setdefault("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")


def sample_from(model_dir: Path, prompts, seed: int, max_new_tokens: int):
    """Reload from disk exactly as a user would (offline) and sample each prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    results = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens)
        text = tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        results.append((prompt, text))
    return results


def write_model_card(out: Path, args, stats: dict, samples) -> None:
    n = stats["params"]
    hist = "\n".join(f"| {s} | {tr:.3f} | {va:.3f} |" for s, tr, va in stats["history"])
    sample_md = "\n\n".join(f"Prompt `{p}`:\n\n```text\n{p}{t}\n```" for p, t in samples)
    where = f"{args.threads} CPU threads" if args.device == "cpu" else args.device
    books = "\n".join(f"- *{title}* ({year})" for _, title, year in BOOKS)
    card = f"""# shardserve default model (toy)

A tiny Llama trained from scratch on {where} ({stats["tokens_seen"] / 1e6:.1f} M tokens). It ships
inside the package so that `shardserve generate --prompt "..."` works with no download and no
GPU. **It is a toy for smoke tests and demos, not a useful assistant**: it writes
Austen-flavoured English words and phrases that rarely make sense for more than a few words,
knows nothing, follows no instructions and has no chat template.

## Architecture

`LlamaForCausalLM` (transformers), {n:,} parameters ({n / 1e6:.2f} M), stored in bfloat16
(`model.safetensors`).

| field | value |
| --- | --- |
| hidden_size | {args.hidden} |
| num_hidden_layers | {args.layers} |
| num_attention_heads | {args.heads} (head_dim {args.hidden // args.heads}) |
| num_key_value_heads | {args.kv_heads} (grouped-query attention, on purpose) |
| intermediate_size | {args.intermediate} (SiLU gated MLP) |
| vocab_size | {stats["vocab_size"]} (byte-level BPE) |
| max_position_embeddings | {args.max_positions} (trained on sequences of {args.seq_len}) |
| rope theta | 10000 |
| rms_norm_eps | 1e-5 |
| tie_word_embeddings | true |

Tokenizer: byte-level BPE (`tokenizers`), vocab {stats["vocab_size"]}, special tokens
`<s>` (0, bos), `</s>` (1, eos), `<pad>` (2, pad); no `<unk>` (every byte is in the vocabulary).
Encoding adds `<s>` in front, like Llama. The model was trained on windows that start with `<s>`
and a paragraph; `</s>` ends each chapter, so generation seldom stops before max_new_tokens.

## Data

{stats["corpus_mb"]} MB of Jane Austen (public domain; Project Gutenberg texts as packaged in
Debian's `r-cran-janeaustenr`), see `tools/default_model/corpus/README.md`:

{books}

Chapter headings, title pages and the `_italics_` markup were removed and lines were unwrapped
into paragraphs. Chapters 10, 30, 50... of each book ({stats["val_tokens"]:,} tokens) were held
out for validation; the other {stats["train_tokens"]:,} tokens were used for training.

## Training

`{stats["command"]}` (seed {args.seed}): AdamW (betas 0.9/0.95,
weight decay {args.weight_decay}), peak lr {args.lr:g} after {args.warmup_steps} warmup steps, cosine
to {args.min_lr:g} at {args.max_tokens:,} tokens or {args.minutes:g} minutes, whichever came first, batch {args.batch} x {args.seq_len} tokens, gradient clip 1.0,
fp32 on {where} (torch {stats["torch"]}, transformers
{stats["transformers"]}). {stats["steps"]:,} steps, {stats["tokens_seen"]:,} tokens
(~{stats["epochs"]} epochs) in {stats["train_minutes"]} minutes of wall-clock time, an average of
{stats["tokens_per_s"]:,} tokens/s. Wall time depends on what else the machine runs: two idle
cores of the 2-core development machine do about 4,000 tokens/s (~13 minutes for 3.2 M tokens).

Final loss (cross-entropy, nats/token): train {stats["final_train_loss"]} (mean of the last 50
steps), validation {stats["final_val_loss"]}.

| step | train loss | val loss |
| --- | --- | --- |
{hist}

## Samples

Reloaded from this directory with `AutoModelForCausalLM`/`AutoTokenizer`, sampled with
`generation_config.json` (temperature 0.8, top_k 50, top_p 0.95, repetition_penalty 1.1),
48 new tokens:

{sample_md}

## Licence

The training text is in the public domain. The weights and tokenizer were produced by the
shardserve project and are distributed under the project's licence (Apache-2.0).
"""
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    stats_path = args.stats or (
        HERE / "last_run.json"
        if out.resolve() == DEFAULT_OUT.resolve()
        else out.with_name(out.name + "-stats.json")
    )
    stats_path.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
