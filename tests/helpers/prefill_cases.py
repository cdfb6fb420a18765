"""A mixed step (a prefill chunk after a cached prefix, a whole prompt, a decode token) run
eagerly and through engine/prefill_graphs.py, for the CPU test (interpreter, padded forward run
eagerly) and the GPU test (captured and replayed)."""

from __future__ import annotations

import torch

from shardserve.engine.scheduler import ScheduledSeq, SchedulerOutput
from shardserve.layers.forward_context import forward_context

BLOCK = 4  # the engine's block_size in these cases: the step's sequences cross blocks
ENGINE_OPTIONS = dict(block_size=BLOCK, max_num_seqs=8, num_kv_blocks=32, max_model_len=64)


def eager_logits(runner, seqs: list[ScheduledSeq]) -> torch.Tensor:
    """The eager path of ModelRunner._launch: float32 logits of each sequence's last token."""
    input_ids, positions, meta = runner._prepare(SchedulerOutput(seqs=seqs))
    with torch.inference_mode(), forward_context(meta):
        hidden = runner.model(input_ids, positions)
        rows = torch.tensor([meta.query_start_loc_host[i + 1] - 1 for i in range(len(seqs))], device=hidden.device)
        return runner.model.compute_logits(hidden.index_select(0, rows))


def kv_caches(runner) -> list[torch.Tensor]:
    return [c.clone() for layer in runner.attention_layers for c in layer.kv_cache]


def mixed_step(runner) -> list[ScheduledSeq]:
    """Writes two cached prefixes eagerly, then returns a 13-token step over them: sequence a's
    second chunk (5 tokens after 6), b's whole 7-token prompt, c's decode token after 9."""
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(3, 200, (n,), generator=gen).tolist() for n in (11, 7, 10))
    eager_logits(runner, [ScheduledSeq("a", a[:6], 0, [1, 2, 3], None), ScheduledSeq("c", c[:9], 0, [6, 7, 8], None)])
    return [ScheduledSeq("a", a[6:], 6, [1, 2, 3], None), ScheduledSeq("b", b, 0, [4, 5], None),
            ScheduledSeq("c", c[9:], 9, [6, 7, 8], None)]
