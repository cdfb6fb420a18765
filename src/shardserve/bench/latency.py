"""`shardserve bench`: our tensor-parallel engine and the Accelerate baseline, same GPUs, same
weights, prompts of the same length (fresh random token ids each run), one invocation, so the
ratios are fair.

Order of a run: measure the GPU's copy bandwidth; load the baseline and take its reference
(greedy tokens and per-position logits for one prompt); load our engine (load and warm-up timed
apart) and print its correctness against that reference (bench/correctness.py); then time our
engine variants and the baseline (latency of the whole batch, and time to first token from
max_new_tokens=1 runs). From a real checkpoint every load is cold: its files are evicted from
the page cache before each engine loads them (page_cache.py).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shardserve.bench import page_cache
from shardserve.bench.correctness import check_engine, format_check, take_reference
from shardserve.bench.hardware import copy_bandwidth, describe
from shardserve.bench.report import EngineResult, table, write_reports
from shardserve.models.config import ModelConfig

logger = logging.getLogger(__name__)



@dataclass
class BenchConfig:
    model: str  # a model directory, or a catalog name with random_weights
    random_weights: bool = False
    tp: int = 1
    batch: int = 4
    prompt_len: int = 32
    new_tokens: int = 256
    reps: int = 10
    baseline_reps: int = 3  # the baseline is slow; its spread is small
    engines: tuple[str, ...] = ("tp", "accelerate")
    dtype: str | None = None  # default: the checkpoint's (bf16 if it names none)
    check_tokens: int = 16  # greedy tokens compared with transformers; 0 = no check
    out_dir: Path = Path("bench-results")
    seed: int = 0
    # Our engine's variants, each timed: label -> EngineConfig overrides (extra= for knobs).
    variants: dict[str, dict] = field(default_factory=lambda: {"tp": {}})
    # After timing, one more batch of each variant under the per-rank profiler, into
    # profile_dir/<variant>/ (LLM.start_profile: a trace and an op summary per rank).
    profile_dir: Path | None = None


def run_bench(cfg: BenchConfig) -> tuple[list[EngineResult], dict]:
    from shardserve.config import canonical_dtype, torch_dtype

    with tempfile.TemporaryDirectory(prefix="shardserve-bench-") as tmp:
        model_dir = _model_dir(cfg, Path(tmp))
        model_config = ModelConfig.from_hf(model_dir)
        check_lengths(cfg, model_config)
        dtype_name = canonical_dtype(cfg.dtype or model_config.torch_dtype or "bfloat16")
        dtype = torch_dtype(dtype_name)
        devices = [torch.device("cuda", i) for i in range(cfg.tp)] if torch.cuda.is_available() else [torch.device("cpu")]
        context = {"config": {k: str(v) for k, v in vars(cfg).items()}, "machine": describe(devices)}
        context["copy_bandwidth_GBps"] = bandwidth = copy_bandwidth(devices[0]) / 1e9
        print(f"copy bandwidth {bandwidth:.0f} GB/s on {context['machine'].get('gpus') or 'cpu'}", flush=True)
        rng = random.Random(cfg.seed)
        special = {model_config.bos_token_id, model_config.pad_token_id, *model_config.eos_token_ids}
        ordinary = [i for i in range(min(model_config.vocab_size, 32000)) if i not in special]

        def prompts(n: int) -> list[list[int]]:
            """Fresh random prompts of ordinary (non-special) token ids."""
            return [rng.choices(ordinary, k=cfg.prompt_len) for _ in range(n)]

        common = dict(model=Path(cfg.model).name, precision=dtype_name, batch=cfg.batch, prompt_len=cfg.prompt_len,
                      new_tokens=cfg.new_tokens, copy_bandwidth=bandwidth * 1e9)
        step_bytes = decode_bytes(model_config, dtype, cfg.batch, cfg.prompt_len + cfg.new_tokens / 2)
        baseline, reference, results = None, None, []
        if "accelerate" in cfg.engines or cfg.check_tokens:
            from shardserve.bench.accelerate_baseline import AccelerateBaseline

            _cold(cfg, model_dir)
            baseline = AccelerateBaseline(model_dir, dtype, devices, cfg.random_weights, cfg.seed)
            reference = take_reference(baseline, prompts(1)[0], cfg.check_tokens) if cfg.check_tokens else None
            if "accelerate" not in cfg.engines:
                baseline.close()
                baseline = None
        if "tp" in cfg.engines:
            for label, overrides in cfg.variants.items():
                _cold(cfg, model_dir)
                result, check = _bench_ours(cfg, label, overrides, model_dir, dtype_name, prompts, reference)
                quantization = overrides.get("quantization")
                variant_bytes = step_bytes if quantization is None else decode_bytes(
                    model_config, dtype, cfg.batch, cfg.prompt_len + cfg.new_tokens / 2, quantization)
                results.append(EngineResult(engine=label, tp=cfg.tp, gpus=cfg.tp,
                                            bytes_per_step_per_gpu=variant_bytes / cfg.tp,
                                            **(common | {"precision": quantization or dtype_name}), **result))
                context.setdefault("correctness", {})[label] = check
        if baseline is not None:
            result = _time_engine(lambda p, n: baseline.generate(p, n), prompts, cfg, cfg.baseline_reps)
            results.append(EngineResult(engine="accelerate", tp=1, gpus=len(devices), load_s=baseline.load_seconds,
                                        warmup_s=0.0, bytes_per_step_per_gpu=step_bytes, **common, **result))
            baseline.close()
    print(table(results), flush=True)
    stem = f"{Path(cfg.model).name}-tp{cfg.tp}-b{cfg.batch}-{dtype_name}"
    for path in write_reports(results, context, Path(cfg.out_dir), stem):
        print(f"wrote {path}")
    return results, context


def _cold(cfg: BenchConfig, model_dir: Path) -> None:
    """Before an engine loads a real checkpoint: its files out of the page cache (page_cache.py)."""
    if not cfg.random_weights:
        page_cache.evict(model_dir)


def check_lengths(cfg: BenchConfig, model_config: ModelConfig) -> None:
    """ValueError naming --prompt-len if a sequence would not fit the model's positions (the
    engine's own limit), before the reference run spends minutes on a prompt it cannot take."""
    limit = model_config.max_position_embeddings
    total = cfg.prompt_len + max(cfg.new_tokens, cfg.check_tokens)
    if total > limit:
        raise ValueError(
            f"--prompt-len {cfg.prompt_len} + --new-tokens/--check-tokens "
            f"{max(cfg.new_tokens, cfg.check_tokens)} = {total} exceeds the model's "
            f"max_position_embeddings {limit}"
        )


def _bench_ours(cfg, label, overrides, model_dir, dtype_name, prompts, reference):
    from shardserve import LLM, EngineConfig

    max_len = cfg.prompt_len + max(cfg.new_tokens, cfg.check_tokens)
    blocks_per_seq = -(-max_len // 16)
    options = dict(
        model=str(model_dir), dtype=dtype_name, tensor_parallel_size=cfg.tp, max_model_len=max_len,
        load_format="random" if cfg.random_weights else "auto", seed=cfg.seed,
        enable_prefix_caching=False,  # repeated prompts must not hit a cache the baseline lacks
        num_kv_blocks=(cfg.batch + 1) * blocks_per_seq + 8,
        max_num_batched_tokens=max(2048, cfg.batch * cfg.prompt_len),
        max_num_seqs=max(64, cfg.batch),  # the whole batch in one wave, as the baseline runs it
    ) | overrides
    llm = LLM(config=EngineConfig(**options))
    try:
        load, warmup = llm.load_seconds, llm.warmup_seconds
        check = check_engine(llm, reference) if reference else {}
        if check:
            print(f"correctness [{label}] vs transformers: {format_check(check)}", flush=True)
        from shardserve import SamplingParams

        def generate(batch, n):
            params = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
            return [o.token_ids for o in llm.generate(batch, params)]

        timings = _time_engine(generate, prompts, cfg, cfg.reps)
        if cfg.profile_dir is not None:
            llm.start_profile(str(cfg.profile_dir / label))
            generate(prompts(cfg.batch), cfg.new_tokens)
            print(f"profile [{label}]: {', '.join(llm.stop_profile())} (and the other ranks' beside them)", flush=True)
        return dict(load_s=load, warmup_s=warmup, **timings), check
    finally:
        llm.shutdown()


def _time_engine(generate, prompts, cfg: BenchConfig, reps: int) -> dict:
    """Latency of the whole batch (fresh prompts each rep) and TTFT (max_new_tokens=1)."""
    generate(prompts(cfg.batch), cfg.new_tokens)  # warm-up (allocator, autotuning, caches)
    latencies, ttfts = [], []
    for _ in range(reps):
        batch = prompts(cfg.batch)
        t0 = time.perf_counter()
        out = generate(batch, cfg.new_tokens)
        latencies.append(time.perf_counter() - t0)
        assert all(len(o) == cfg.new_tokens for o in out), [len(o) for o in out]
    for _ in range(reps):
        batch = prompts(cfg.batch)
        t0 = time.perf_counter()
        generate(batch, 1)
        ttfts.append(time.perf_counter() - t0)
    return {"latencies_s": latencies, "ttfts_s": ttfts}


# -- model and bytes ------------------------------------------------------------------------------
def _model_dir(cfg: BenchConfig, tmp: Path) -> Path:
    path = Path(cfg.model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json")
        return path
    if not cfg.random_weights:
        raise ValueError(f"model {cfg.model!r} is not a directory: pass --random-weights to use the catalog")
    from shardserve.weights.catalog import write_config_dir

    directory = write_config_dir(cfg.model, tmp / "model")
    config = ModelConfig.from_hf(directory)
    write_placeholder_tokenizer(directory, config)
    return directory


def write_placeholder_tokenizer(directory: Path, config: ModelConfig) -> None:
    """A word-level tokenizer with one token per model id ("t0", "t1", ...): the benchmark feeds
    token ids, but the engine detokenizes its output, so every id must decode."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {}
    for key, value in (("bos_token", config.bos_token_id), ("pad_token", config.pad_token_id)):
        if value is not None:
            special[key] = f"t{value}"
    if config.eos_token_ids:
        special["eos_token"] = f"t{config.eos_token_ids[0]}"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", **special).save_pretrained(str(directory))


def decode_bytes(
    config: ModelConfig, dtype: torch.dtype, batch: int, mean_context: float, quantization: str | None = None
) -> float:
    """Bytes one decode step must read with one GPU: every weight except lookup-only embedding
    tables (the LM head counts; a tied embedding counts once) in the bytes it is stored in (when
    quantized, 8-bit linear weights and an untied LM head, each with its float32 scales; a tied
    head stays 16-bit), plus the KV cache of the batch."""
    from shardserve.layers.embedding import VocabParallelEmbedding
    from shardserve.models import create_model

    model = create_model(config, dtype, quantization)  # meta: shapes only
    head = model.lm_head
    lookups = {id(p) for m in model.modules() if isinstance(m, VocabParallelEmbedding) and m is not head
               for p in m.parameters()}
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in lookups)
    elem = torch.empty((), dtype=dtype).element_size()
    kv = 2 * config.num_layers * config.num_kv_heads * config.head_dim * elem * batch * mean_context
    return weights + kv
