"""How many KV-cache blocks a rank allocates: what its memory holds, then the minimum over the
ranks, since every rank allocates the same number (a GPU with less free memory must not be asked
for more than it has)."""

from __future__ import annotations

import torch

from shardserve.config import EngineConfig
from shardserve.kernels.tuned_gemm import DECODE_MAX_TOKENS
from shardserve.models.config import ModelConfig
from shardserve.parallel import get_parallel_info, get_tp_size


def block_bytes(attention_layers, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block across every layer: keys and values."""
    layer = attention_layers[0]
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * block_size * layer.num_kv_heads * layer.head_dim * elem * len(attention_layers)


def blocks_that_fit(config: EngineConfig, model_config: ModelConfig, device: torch.device, bytes_per_block: int,
                    max_model_len: int, graph_tokens: int = 0) -> int:
    """How many blocks this rank's memory holds (config.num_kv_blocks when set). graph_tokens:
    the most rows a CUDA graph computes (engine/cuda_graphs.py, prefill_graphs.py; 0 without
    graphs), whose memory the graphs' pool keeps beside what eager steps use."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = total * config.gpu_memory_utilization - (total - free) - _working_memory(config, model_config,
                                                                                           max_model_len, graph_tokens)
    else:
        budget = config.cpu_kv_cache_gib * 2**30
        # No point holding more than every sequence at full length, a few times over.
        per_seq = -(-max_model_len // config.block_size)
        budget = min(budget, 4 * config.max_num_seqs * per_seq * bytes_per_block)
    return max(int(budget // bytes_per_block), 0)


def step_tokens(config: EngineConfig, max_model_len: int) -> int:
    """The most tokens a step computes: max_num_batched_tokens; without chunked prefill, a whole
    prompt past it, with the other sequences' decode tokens (engine/scheduler.py)."""
    if config.enable_chunked_prefill:
        return config.max_num_batched_tokens
    return max(config.max_num_batched_tokens, max_model_len + config.max_num_seqs - 1)


def _working_memory(config: EngineConfig, model_config: ModelConfig, max_model_len: int, graph_tokens: int) -> int:
    """Bytes that stay outside the cache (a rough upper bound): the activations of the largest
    eager step and of the largest graph, and the graphs' shared logits [max_num_seqs, vocab]
    float32; with int8 weights, the 16-bit copy of one weight that a step of more than
    DECODE_MAX_TOKENS rows dequantises (kernels/weight_convert.py), once for eager steps and once
    kept by the graphs' pool: at most gate and up projections together."""
    mc, tp = model_config, get_tp_size()
    per_token = (8 * mc.hidden_size + 3 * mc.intermediate_size // tp + mc.vocab_size) * 4
    working = (step_tokens(config, max_model_len) + graph_tokens) * per_token
    if graph_tokens:
        working += config.max_num_seqs * mc.vocab_size * 4
    if config.quantization == "int8":
        dequantised = 2 * mc.intermediate_size // tp * mc.hidden_size * 2
        working += dequantised * (2 if graph_tokens > DECODE_MAX_TOKENS else 1)
    return working


def min_over_ranks(blocks: int, device: torch.device) -> int:
    """The smallest of every rank's `blocks` (a collective: every rank calls it)."""
    info = get_parallel_info()
    if info.world_size == 1:
        return blocks
    count = torch.tensor([blocks], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN, group=info.group)
    return int(count.item())
