"""The sampler on a GPU: a step never waits for the GPU (Sampler.sample's promise, on which
asynchronous scheduling rests), and its greedy tokens, filtered distributions and logprob rows
are the CPU's."""

from __future__ import annotations

import torch

from helpers.sampling_info import info
from shardserve.engine.sampler import Sampler, _processed_probs, read_samples
from shardserve.engine.scheduler import SamplingInfo

VOCAB = 3000


def batch(first_step: bool) -> tuple[list[str], list[SamplingInfo]]:
    """Every per-row feature: penalties (the prompt sent on the first step only), logit_bias,
    suppression, top-k / top-p / min-p, seeded and unseeded draws, logprobs with top ones."""
    prompt = [5, 17, 250, 2999] if first_step else []
    rows = {
        "greedy": info(temperature=0.0, logprobs=True, top_logprobs=3),
        "penalised": info(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2,
                          penalty_token_ids=prompt),
        "biased": info(temperature=0.0, logit_bias=((7, 100.0), (11, -100.0)), suppress_token_ids=[7, 2]),
        "filtered": info(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, seed=3),
        "unseeded": info(temperature=1.2, logprobs=True),
    }
    return list(rows), list(rows.values())


def test_a_step_never_waits_for_the_gpu():
    device = torch.device("cuda")
    sampler = Sampler(device)
    gen = torch.Generator(device=device).manual_seed(0)
    for step in range(3):  # the first step creates the per-request state; later ones add to it
        ids, infos = batch(first_step=step == 0)
        logits = torch.randn(len(ids), VOCAB, device=device, generator=gen) * 3
        logits[2, 11] = 50.0  # the biased row's argmax, but for its -100
        last = torch.randint(0, VOCAB, (len(ids),), device=device, generator=gen)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host wait raises
        try:
            tokens, logprobs = sampler.sample(logits, ids, infos, last)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        samples = read_samples(tokens, logprobs, infos)
        assert samples[2][0] != 7 and samples[2][0] != 11  # +100 suppressed beats the bias; -100 bans
        assert len(samples[0][2]) == 3 and samples[4][1] is not None


def test_greedy_rows_and_filters_match_the_cpu():
    gen = torch.Generator().manual_seed(1)
    ids, infos = batch(first_step=True)
    greedy = [i for i, row in enumerate(infos) if row.greedy]
    logits = torch.randn(len(ids), VOCAB, generator=gen) * 3
    last = torch.randint(0, VOCAB, (len(ids),), generator=gen)
    outs = {}
    for device in ("cpu", "cuda"):
        samples = Sampler(torch.device(device))(logits.to(device), ids, infos, last.to(device))
        outs[device] = [samples[i] for i in greedy]
    for cpu, gpu in zip(outs["cpu"], outs["cuda"], strict=True):
        assert cpu[0] == gpu[0]
        assert (cpu[1] is None) == (gpu[1] is None) and (cpu[1] is None or abs(cpu[1] - gpu[1]) < 1e-4)
        assert (cpu[2] is None) == (gpu[2] is None) and [t for t, _ in cpu[2] or []] == [t for t, _ in gpu[2] or []]
    sampled = [row for row in infos if not row.greedy]
    rows = logits[[i for i, row in enumerate(infos) if not row.greedy]]
    torch.testing.assert_close(_processed_probs(rows.cuda(), sampled).cpu(), _processed_probs(rows, sampled),
                               rtol=1e-4, atol=1e-6)
