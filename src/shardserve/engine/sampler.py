"""Turn a step's logits into next tokens, on the device, with one host read at the end.

Sampling uses the exponential-race form of the Gumbel trick: argmax(p / q) with q ~ Exp(1) is a
draw from p. A request with a seed owns a torch.Generator that only it advances, so its draws do
not depend on what else is in the batch.
"""

from __future__ import annotations

import torch

from shardserve.engine.scheduler import SamplingInfo


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._request_generators.pop(rid, None)

    def __call__(
        self, logits: torch.Tensor, request_ids: list[str], infos: list[SamplingInfo]
    ) -> list[tuple[int, float | None]]:
        """logits: [num_seqs, vocab] float32 -> (token id, logprob of it or None) per row."""
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(i.logprobs for i in infos) else None
        if any(i.penalty_token_ids or i.suppress_token_ids for i in infos):
            logits = logits.clone()  # edited in place below; the caller's tensor stays as it was
        for row, info in enumerate(infos):
            if info.penalty_token_ids:
                _apply_repetition_penalty(logits[row], info.penalty_token_ids, info.repetition_penalty)
            if info.suppress_token_ids:
                logits[row, info.suppress_token_ids] = float("-inf")

        tokens = logits.argmax(dim=-1)
        sampled_rows = [r for r, i in enumerate(infos) if not i.greedy]
        if sampled_rows:
            rows = torch.tensor(sampled_rows, device=logits.device)
            probs = _processed_probs(logits[rows], [infos[r] for r in sampled_rows])
            noise = torch.empty_like(probs)
            unseeded = []
            for k, r in enumerate(sampled_rows):
                if infos[r].seed is None:
                    unseeded.append(k)
                else:
                    noise[k].exponential_(generator=self._generator_for(request_ids[r], infos[r].seed))
            if unseeded:
                idx = torch.tensor(unseeded, device=logits.device)
                noise[idx] = torch.empty_like(noise[idx]).exponential_(generator=self._generator)
            tokens[rows] = (probs / noise).argmax(dim=-1)

        # Everything is queued before the one wait of the step (the first .tolist()).
        chosen_lp = raw_logprobs.gather(1, tokens[:, None]).squeeze(1) if raw_logprobs is not None else None
        chosen = tokens.tolist()
        if chosen_lp is None:
            return [(t, None) for t in chosen]
        lp = chosen_lp.tolist()
        return [(t, lp[r] if infos[r].logprobs else None) for r, t in enumerate(chosen)]

    def _generator_for(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._request_generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self._request_generators[request_id] = gen
        return gen


def _apply_repetition_penalty(row: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    # As in CTRL / HF: shrink positive logits, push negative ones further down.
    ids = torch.tensor(sorted(set(token_ids)), device=row.device)
    seen = row[ids]
    row[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)


def _processed_probs(logits: torch.Tensor, infos: list[SamplingInfo]) -> torch.Tensor:
    """Temperature, then top-k, then top-p; returns probabilities [rows, vocab]."""
    device = logits.device
    temps = torch.tensor([i.temperature for i in infos], device=device, dtype=logits.dtype)
    logits = logits / temps[:, None]
    top_k = torch.tensor([i.top_k if i.top_k > 0 else logits.shape[1] for i in infos], device=device)
    top_p = torch.tensor([i.top_p for i in infos], device=device, dtype=logits.dtype)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=device)[None, :]
    drop = ranks >= top_k[:, None]
    sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop |= mass_before >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.softmax(filtered, dim=-1)
