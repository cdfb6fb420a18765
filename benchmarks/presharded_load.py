"""Issue 7's loading comparison on the device machine (`quant_bench.py --part load`): a random
fp16 HF checkpoint of a catalog model and its pre-sharded partition, the disk's own ceiling,
transformers `from_pretrained(device_map="auto")`, our loader on the HF checkpoint, and our
pre-sharded loader with and without verification and O_DIRECT, every read from a cold page
cache where the machine allows it. Runs on a CPU too (a smoke test of the script)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from stages import RESULTS, stage

CUDA = torch.cuda.is_available()


def write_hf_checkpoint(model: str, path: Path, shard_bytes: int = 5 << 30) -> Path:
    """A random fp16 HF checkpoint (safetensors shards + index), tensors made on the GPU."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from shardserve.bench.latency import write_placeholder_tokenizer
    from shardserve.models.config import ModelConfig
    from shardserve.weights.catalog import write_config_dir

    write_config_dir(model, path)
    write_placeholder_tokenizer(path, ModelConfig.from_hf(path))
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float16)
    weight_map, shard, size, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, index
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size, index = {}, 0, index + 1

    for name, p in meta.named_parameters():
        if name == "lm_head.weight" and meta.config.tie_word_embeddings:
            continue  # tied to the embedding, which is saved
        shard[name] = (torch.randn(p.shape, device="cuda" if CUDA else "cpu", dtype=torch.float16) * 0.02).cpu()
        size += shard[name].numel() * 2
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    total = sum((path / f).stat().st_size for f in set(weight_map.values()))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return path


def drop_page_cache(paths: list[Path]) -> str:
    """Cold reads: after a sync, drop the whole page cache where we may (root), else drop these
    files' clean cached pages with posix_fadvise(DONTNEED) (no privileges needed)."""
    from shardserve.bench.page_cache import evict_files

    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return "drop_caches"
    except OSError:
        pass
    evict_files(paths)
    return "fadvise_dontneed"


def disk_ceiling(paths: list[Path], threads: int, direct: bool, cold: bool = True) -> dict:
    """What the disk gives with no loader around it: every file read cold, front to back, in
    16 MiB requests by `threads` threads at once into throwaway page-aligned buffers (cold
    False: from the page cache as it is; run twice, the second run reads memory alone)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    piece = 16 << 20
    cache = drop_page_cache(paths) if cold else "as is"
    jobs = [(p, lo) for p in paths for lo in range(0, p.stat().st_size, piece)]
    fds = {p: os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0)) for p in paths}

    def worker(k: int) -> int:
        raw = np.empty(piece + 4096, dtype=np.uint8)
        skip = -raw.ctypes.data % 4096
        buf, n = memoryview(raw[skip : skip + piece]), 0
        for p, lo in jobs[k::threads]:
            n += os.preadv(fds[p], [buf], lo)
        return n

    t0 = time.time()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(threads)))
    wall = time.time() - t0
    for fd in fds.values():
        os.close(fd)
    return {"page_cache": cache, "threads": threads, "direct": direct, "GB": total / 1e9, "GBps": total / wall / 1e9}


def _rank_load(rank: int, tp: int, model_dir: str, verify: bool, direct: bool, ready, go, results) -> None:
    """One rank: CUDA ready, then (on `go`) build + read its rank file onto cuda:rank (CPU:
    the safetensors path); for an HF checkpoint dir, its slices through the generic loader."""
    from shardserve.models import create_model
    from shardserve.models.config import ModelConfig
    from shardserve.parallel import ParallelInfo, set_parallel_info
    from shardserve.weights.fast_read import LoadStats
    from shardserve.weights.loader import load_weights, materialize
    from shardserve.weights.manifest import is_presharded
    from shardserve.weights.presharded import load_presharded

    device = f"cuda:{rank}" if CUDA else "cpu"
    if CUDA:
        torch.cuda.set_device(rank)
        torch.zeros(1, device=device)
    set_parallel_info(ParallelInfo(rank=rank, world_size=tp))
    config = ModelConfig.from_hf(model_dir)
    # Imports and torch's first-call costs (building on meta, meta -> device) before the clock.
    create_model(config, torch.float16)
    torch.empty_like(torch.empty(1, device="meta"), device=device)
    ready.put(rank)
    go.wait()
    t0, stats = time.time(), LoadStats()
    model = create_model(config, torch.float16)
    materialize(model, device)
    stats.build_s = time.time() - t0
    if is_presharded(model_dir):
        load_presharded(model, model_dir, rank, tp, verify=verify, direct=direct, stats=stats)
    else:
        load_weights(model, model_dir)
        stats.bytes_read = sum(p.numel() * p.element_size() for p in model.parameters())
    if CUDA:
        torch.cuda.synchronize()
    stats.total_s = time.time() - t0
    results.put((rank, t0, time.time(), stats.as_dict()))


def ours(pre: Path, tp: int, verify: bool, direct: bool = False, cold: bool = True) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_rank_load, args=(r, tp, str(pre), verify, direct, ready, go, results)) for r in range(tp)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    cache = drop_page_cache(sorted(pre.glob("*.safetensors"))) if cold else "as is"
    go.set()
    ranks = sorted(results.get(timeout=400) for _ in procs)
    for p in procs:
        p.join()
    wall = max(r[2] for r in ranks) - min(r[1] for r in ranks)
    total = sum(r[3]["bytes_read"] for r in ranks)
    return {"page_cache": cache, "verify": verify, "direct": direct, "wall_s": wall, "GB": total / 1e9, "GBps": total / wall / 1e9,
            "ranks": [r[3] for r in ranks]}


def transformers_load(hf: Path, cold: bool = True) -> dict:
    from transformers import AutoModelForCausalLM

    cache = drop_page_cache(sorted(hf.glob("*.safetensors"))) if cold else "as is"
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float16, device_map="auto", local_files_only=True)
    for d in range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)
    wall = time.time() - t0
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return {"page_cache": cache, "wall_s": wall, "GB": total / 1e9, "GBps": total / wall / 1e9}


def load(workdir: Path, model: str, tp: int, deadline: float, warm: bool = False, cold: bool = True) -> None:
    """cold: the page cache dropped before every read. warm: then both checkpoints read from the
    page cache (each read twice first), where the disk is out of the way and the loaders alone
    set the pace: what faster storage would give."""
    from shardserve.weights.partition import partition

    hf, pre = workdir / model / "hf", workdir / model / f"tp{tp}-fp16"
    if not (hf / "model.safetensors.index.json").is_file():
        stage("write_hf_checkpoint", lambda: str(write_hf_checkpoint(model, hf)), 120, deadline)
    if not (pre / "shardserve-manifest.json").is_file():
        shutil.rmtree(pre, ignore_errors=True)  # an earlier command stopped half way
        stage("partition", lambda: str(partition(hf, pre, tp, "fp16")), 200, deadline)
    files = sorted(pre.glob("*.safetensors"))
    if cold:
        for threads, direct in ((1, False), (8, False), (8, True)):
            stage(f"disk_ceiling_threads={threads}_direct={direct}", lambda t=threads, d=direct: disk_ceiling(files, t, d),
                  60, deadline)
        theirs = stage("transformers_device_map_auto", lambda: transformers_load(hf), 120, deadline)
        # Issue 3's comparison: our own loader on the HF checkpoint (sliced reads) vs pre-sharded.
        stage("ours_from_hf_checkpoint", lambda: ours(hf, tp, True), 120, deadline)
        for verify, direct in ((True, False), (True, True), (False, True)):
            name = f"ours_verify={verify}_direct={direct}"
            mine = stage(name, lambda v=verify, d=direct: ours(pre, tp, v, d), 60, deadline)
            if mine and theirs:
                RESULTS[name]["speedup_vs_transformers"] = theirs["wall_s"] / mine["wall_s"]
    if warm:
        hf_files = sorted(hf.glob("*.safetensors"))
        for label, paths in (("presharded", files), ("hf", hf_files)):
            for attempt in (1, 2):
                stage(f"page_cache_{label}_read_{attempt}", lambda p=paths: disk_ceiling(p, 8, False, cold=False),
                      60, deadline)
        theirs = stage("warm_transformers_device_map_auto", lambda: transformers_load(hf, cold=False), 120, deadline)
        for verify in (True, False):
            name = f"warm_ours_verify={verify}"
            mine = stage(name, lambda v=verify: ours(pre, tp, v, cold=False), 60, deadline)
            if mine and theirs:
                RESULTS[name]["speedup_vs_transformers"] = theirs["wall_s"] / mine["wall_s"]
