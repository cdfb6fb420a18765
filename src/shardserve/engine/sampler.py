"""Turn a step's logits into next tokens, on the device, with one host read at the end.

Sampling uses the exponential-race form of the Gumbel trick: argmax(p / q) with q ~ Exp(1) is a
draw from p. A request with a seed owns a torch.Generator that only it advances, so its draws do
not depend on what else is in the batch.

`sample` leaves the tokens on the device and never waits for the GPU (host values it needs go up
through pinned memory; a repetition penalty keeps each request's seen tokens on the device and
adds its newest token, which may still be in flight, there), so the next step can be launched before this one's tokens are read;
calling the sampler reads them at once. Every rank may run it: same logits (all-gathered), same
generators, same tokens.
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
        # Per request with a repetition penalty: bool [vocab], the tokens it has seen (prompt and
        # every output that became an input), kept here so no step re-sends the sequence.
        self._seen: dict[str, torch.Tensor] = {}

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._request_generators.pop(rid, None)
            self._seen.pop(rid, None)

    def __call__(
        self, logits: torch.Tensor, request_ids: list[str], infos: list[SamplingInfo],
        last_token_ids: torch.Tensor | None = None,
    ) -> list[tuple[int, float | None]]:
        """logits: [num_seqs, vocab] float32 -> (token id, logprob of it or None) per row."""
        return read_samples(*self.sample(logits, request_ids, infos, last_token_ids), infos)

    def sample(
        self, logits: torch.Tensor, request_ids: list[str], infos: list[SamplingInfo],
        last_token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [num_seqs] int64 and, if any row asks for them, their logprobs [num_seqs]
        float32, both on the device.

        last_token_ids: [num_seqs] int64 on the device, each row's newest input token (the one
        these logits follow). A row with a repetition penalty adds it to its seen tokens (it may
        still be in flight: asynchronous scheduling), so they hold the row's whole sequence, the
        prompt having come in its first step's penalty_token_ids. The engine always passes it
        when a row has a penalty; None: the rows' penalty_token_ids alone.
        """
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(i.logprobs for i in infos) else None
        if any(i.repetition_penalty != 1.0 or i.suppress_token_ids for i in infos):
            logits = logits.clone()  # edited in place below; the caller's tensor stays as it was
        for row, info in enumerate(infos):
            if info.repetition_penalty != 1.0:
                seen = self._seen_tokens(request_ids[row], info.penalty_token_ids, logits.shape[1])
                if last_token_ids is not None:
                    seen.index_fill_(0, last_token_ids[row : row + 1], True)
                _apply_repetition_penalty(logits[row], seen, info.repetition_penalty)
            if info.suppress_token_ids:
                logits[row, on_device(info.suppress_token_ids, torch.int64, logits.device)] = float("-inf")

        tokens = logits.argmax(dim=-1)
        sampled_rows = [r for r, i in enumerate(infos) if not i.greedy]
        if sampled_rows:
            rows = on_device(sampled_rows, torch.int64, logits.device)
            probs = _processed_probs(logits[rows], [infos[r] for r in sampled_rows])
            noise = torch.empty_like(probs)
            unseeded = []
            for k, r in enumerate(sampled_rows):
                if infos[r].seed is None:
                    unseeded.append(k)
                else:
                    noise[k].exponential_(generator=self._generator_for(request_ids[r], infos[r].seed))
            if unseeded:
                idx = on_device(unseeded, torch.int64, logits.device)
                noise[idx] = torch.empty_like(noise[idx]).exponential_(generator=self._generator)
            tokens[rows] = (probs / noise).argmax(dim=-1)
        chosen_lp = raw_logprobs.gather(1, tokens[:, None]).squeeze(1) if raw_logprobs is not None else None
        return tokens, chosen_lp

    def _seen_tokens(self, request_id: str, new_ids: list[int], vocab: int) -> torch.Tensor:
        seen = self._seen.get(request_id)
        if seen is None:
            seen = self._seen[request_id] = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        if new_ids:
            seen[on_device(new_ids, torch.int64, self.device)] = True
        return seen

    def _generator_for(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._request_generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self._request_generators[request_id] = gen
        return gen


def read_samples(
    tokens: torch.Tensor, logprobs: torch.Tensor | None, infos: list[SamplingInfo]
) -> list[tuple[int, float | None]]:
    """(token id, logprob or None) per row, read to the host (waits for the GPU)."""
    chosen = tokens.tolist()
    if logprobs is None:
        return [(t, None) for t in chosen]
    lp = logprobs.tolist()
    return [(t, lp[r] if infos[r].logprobs else None) for r, t in enumerate(chosen)]


def on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on the device without waiting for the GPU: a copy from pageable memory
    would first wait for the stream (and so for the step before), one from pinned memory not."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def _apply_repetition_penalty(row: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """As in CTRL / HF: shrink the positive logits of the tokens seen (bool [vocab]), push
    negative ones further down; each seen token once."""
    row.copy_(torch.where(seen, torch.where(row > 0, row / penalty, row * penalty), row))


def _processed_probs(logits: torch.Tensor, infos: list[SamplingInfo]) -> torch.Tensor:
    """Temperature, then top-k, then top-p; returns probabilities [rows, vocab]."""
    device = logits.device
    temps = on_device([i.temperature for i in infos], logits.dtype, device)
    logits = logits / temps[:, None]
    top_k = on_device([i.top_k if i.top_k > 0 else logits.shape[1] for i in infos], torch.int64, device)
    top_p = on_device([i.top_p for i in infos], logits.dtype, device)
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
