"""engine/kv_budget.py: what a GPU rank keeps outside its KV cache (mem_get_info faked: no GPU)."""

import torch

from shardserve.config import EngineConfig
from shardserve.engine import kv_budget
from shardserve.models.config import ModelConfig


def test_room_is_kept_for_the_prefill_graphs_and_dequantised_weights(monkeypatch, tiny_checkpoint):
    path = str(tiny_checkpoint("llama"))
    mc = ModelConfig.from_hf(path)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60 * 2**30, 80 * 2**30))

    def kept(graph_tokens: int, quantization: str | None = None, chunked: bool = True) -> int:
        """Bytes kept outside the cache, with 1-byte blocks."""
        config = EngineConfig(model=path, quantization=quantization, max_num_batched_tokens=1024,
                              enable_chunked_prefill=chunked, max_num_seqs=8)
        free = 80 * 2**30 * config.gpu_memory_utilization - 20 * 2**30
        return int(free) - kv_budget.blocks_that_fit(config, mc, torch.device("cuda"), 1, 2048, graph_tokens)

    per_token = (8 * mc.hidden_size + 3 * mc.intermediate_size + mc.vocab_size) * 4
    logits = 8 * mc.vocab_size * 4  # the graphs' shared output, max_num_seqs rows
    assert abs(kept(0) - 1024 * per_token) <= 1
    assert abs(kept(512) - (1024 + 512) * per_token - logits) <= 1  # a 512-token graph's activations besides
    dequantised = 2 * mc.intermediate_size * mc.hidden_size * 2  # gate and up, 16-bit
    assert abs(kept(0, "int8") - kept(0) - dequantised) <= 1  # eager steps' dequantised weight
    assert abs(kept(512, "int8") - kept(512) - 2 * dequantised) <= 1  # and the one the graphs' pool keeps
    assert abs(kept(64, "int8") - kept(64) - dequantised) <= 1  # up to 64 rows the graphs read int8
    # Without chunking a step may hold a whole prompt of max_model_len tokens and 7 decodes.
    assert abs(kept(0, chunked=False) - (2048 + 7) * per_token) <= 1


def test_the_graph_rows_kept_are_the_most_any_graph_computes():
    """A decode graph computes max_num_seqs rows, a prefill graph its largest token bucket."""
    from types import SimpleNamespace

    from shardserve.engine.model_runner import ModelRunner

    def rows(graphs: bool, prefill: bool, max_num_seqs: int) -> int:
        runner = SimpleNamespace(use_cuda_graphs=graphs, _use_prefill_graphs=lambda: prefill,
                                 config=SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=2048))
        return ModelRunner._graph_tokens(runner)

    assert rows(False, False, 64) == 0
    assert rows(True, False, 64) == 64
    assert rows(True, True, 64) == 512
    assert rows(True, True, 1024) == 1024
