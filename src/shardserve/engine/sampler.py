"""Turn a step's logits into next tokens, on the device, with one host read at the end.

Sampling uses the exponential-race form of the Gumbel trick: argmax(p / q) with q ~ Exp(1) is a
draw from p. A request with a seed owns a torch.Generator that only it advances, so its draws do
not depend on what else is in the batch.

`sample` leaves the tokens on the device and never waits for the GPU (host values it needs go up
through pinned memory; penalties keep what they count per request on the device and add each
step's newest token, which may still be in flight, there), so the next step can be launched
before this one's tokens are read; calling the sampler reads them at once. Every rank may run
it: same logits (all-gathered), same generators, same tokens.
"""

from __future__ import annotations

import torch

from shardserve.engine import logprob_rows
from shardserve.engine.scheduler import SamplingInfo
from shardserve.kernels.argmax import argmax_rows


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}
        # Per request with a penalty, what the penalties count, kept here so that no step
        # re-sends the sequence: (prompt tokens: bool [vocab], output token counts: int32 [vocab]).
        self._penalty_state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._logit_bias: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # logit_bias_tensors

    def forget(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._request_generators.pop(rid, None)
            self._penalty_state.pop(rid, None)
            self._logit_bias.pop(rid, None)

    def __call__(
        self, logits: torch.Tensor, request_ids: list[str], infos: list[SamplingInfo],
        last_token_ids: torch.Tensor | None = None,
    ) -> list[tuple[int, float | None, list[tuple[int, float]] | None]]:
        """logits: [num_seqs, vocab] float32 -> (token id, its logprob, the top ones) per row
        (read_samples)."""
        return read_samples(*self.sample(logits, request_ids, infos, last_token_ids), infos)

    def sample(
        self, logits: torch.Tensor, request_ids: list[str], infos: list[SamplingInfo],
        last_token_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [num_seqs] int64 and, if any row asks for them, their logprobs, both on the
        device: float32 [num_seqs, 1 + 2k], k the most top logprobs a row asks for. Column 0 is the
        chosen token's; then the k largest, most likely first; then their token ids (exact in
        float32 below 2^24: one tensor, so one copy to the host).

        last_token_ids: [num_seqs] int64 on the device, each row's newest input token (the one
        these logits follow; it may still be in flight: asynchronous scheduling). A row with a
        penalty counts it as an output token unless this is the row's first sampling step (then
        it is the prompt's last), so the counts cover every output token as soon as it is an
        input, and the prompt comes once, in the first step's penalty_token_ids. The engine
        always passes it when a row has a penalty; None: nothing is counted.
        """
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(i.logprobs for i in infos) else None
        if any(i.has_penalty or i.suppress_token_ids or i.has_logit_bias for i in infos):
            logits = logits.clone()  # edited in place below; the caller's tensor stays as it was
        for row, info in enumerate(infos):
            if info.has_penalty:
                newest = last_token_ids[row : row + 1] if last_token_ids is not None else None
                prompt, counts = self._penalties_of(request_ids[row], info.penalty_token_ids, newest, logits.shape[1])
                _apply_penalties(logits[row], prompt, counts, info)
            if info.has_logit_bias:
                add_logit_bias(logits[row : row + 1], self._bias_of(request_ids[row], info.logit_bias))
            # Last, so that no bias brings back a token min_new_tokens hides. index_fill_: an
            # indexed assignment of a Python float copies it up from pageable memory (a sync).
            if info.suppress_token_ids:
                logits[row].index_fill_(0, on_device(info.suppress_token_ids, torch.int64, logits.device), float("-inf"))

        tokens = argmax_rows(logits)  # torch.argmax's answer; on GPUs a faster kernel pair
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
            tokens[rows] = argmax_rows(probs / noise)
        if raw_logprobs is None:
            return tokens, None
        return tokens, logprob_rows.pack(raw_logprobs, tokens, max(i.top_logprobs for i in infos))

    def _penalties_of(self, request_id: str, prompt_ids: list[int], newest: torch.Tensor | None,
                      vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's (prompt tokens, output token counts), `newest` counted unless the state is
        new (the first sampling step, whose newest input is a prompt token)."""
        state = self._penalty_state.get(request_id)
        if state is None:
            state = self._penalty_state[request_id] = (
                torch.zeros(vocab, dtype=torch.bool, device=self.device),
                torch.zeros(vocab, dtype=torch.int32, device=self.device),
            )
        elif newest is not None:
            state[1].index_add_(0, newest, torch.ones_like(newest, dtype=torch.int32))
        if prompt_ids:  # index_fill_: an indexed assignment of a Python bool would wait for the GPU
            state[0].index_fill_(0, on_device(prompt_ids, torch.int64, self.device), True)
        return state

    def _bias_of(self, request_id: str, bias: tuple[tuple[int, float], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's logit_bias on the device: copied up at its first sampled token, the one step
        whose SamplingInfo carries the pairs."""
        tensors = self._logit_bias.get(request_id)
        if tensors is None:
            assert bias, f"request {request_id}'s logit_bias was not sent with its first sampled token"
            tensors = self._logit_bias[request_id] = logit_bias_tensors(bias, self.device)
        return tensors

    def _generator_for(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._request_generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self._request_generators[request_id] = gen
        return gen


def read_samples(
    tokens: torch.Tensor, logprobs: torch.Tensor | None, infos: list[SamplingInfo]
) -> list[tuple[int, float | None, list[tuple[int, float]] | None]]:
    """(token id, its logprob or None, its row's top_logprobs (token id, logprob) pairs or None)
    per row, read to the host (waits for the GPU). logprobs: as Sampler.sample returns them."""
    chosen = tokens.tolist()
    if logprobs is None:
        return [(t, None, None) for t in chosen]
    rows, width = logprobs.tolist(), logprobs.shape[1]
    samples = []
    for r, t in enumerate(chosen):
        row, info = rows[r], infos[r]
        top = logprob_rows.top_of(row, width, info.top_logprobs) if info.top_logprobs else None
        samples.append((t, row[0] if info.logprobs else None, top))
    return samples


def on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on the device without waiting for the GPU: a copy from pageable memory
    would first wait for the stream (and so for the step before), one from pinned memory not."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def logit_bias_tensors(bias: tuple[tuple[int, float], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SamplingParams.logit_bias on the device, copied up without waiting: (token ids int64 [k],
    biases float32 [k]). Made once per request (both engines) and added with add_logit_bias."""
    return on_device([t for t, _ in bias], torch.int64, device), on_device([b for _, b in bias], torch.float32, device)


def add_logit_bias(logits: torch.Tensor, bias: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """logits [rows, vocab], in place and returned: each bias added to its token's logit in every
    row (the ids are distinct: SamplingParams checks). Both engines' rule."""
    ids, values = bias
    return logits.index_add_(1, ids, values.to(logits.dtype).expand(logits.shape[0], -1))


def _apply_penalties(row: torch.Tensor, prompt: torch.Tensor, counts: torch.Tensor, info: SamplingInfo) -> None:
    """row [vocab] float32, in place. Repetition (CTRL / HF): the logits of tokens in the prompt or
    the output shrink if positive, grow more negative if not, once per token. Then presence and
    frequency (OpenAI): minus presence for a token in the output, minus frequency per occurrence."""
    in_output = counts > 0
    if info.repetition_penalty != 1.0:
        p = info.repetition_penalty
        row.copy_(torch.where(prompt | in_output, torch.where(row > 0, row / p, row * p), row))
    if info.presence_penalty != 0.0 or info.frequency_penalty != 0.0:
        row.sub_(info.presence_penalty * in_output + info.frequency_penalty * counts)


def _processed_probs(logits: torch.Tensor, infos: list[SamplingInfo]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, as transformers orders them; returns
    probabilities [rows, vocab]."""
    device = logits.device
    temps = on_device([i.temperature for i in infos], logits.dtype, device)
    logits = logits / temps[:, None]
    top_k = on_device([i.top_k if i.top_k > 0 else logits.shape[1] for i in infos], torch.int64, device)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=device)[None, :]
    drop = ranks >= top_k[:, None]
    sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    top_ps = [i.top_p for i in infos]
    if any(p < 1.0 for p in top_ps):  # host values, as min_p's: a batch without top_p skips the work
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives). A row
        # at top_p 1 keeps every token (inf): the float32 cumsum may reach 1 before the last ones.
        top_p = on_device([p if p < 1.0 else float("inf") for p in top_ps], logits.dtype, device)
        drop |= sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p[:, None]
    min_ps = [i.min_p for i in infos]
    if any(min_ps):  # host values: a batch without min_p skips the work, and nothing waits
        min_p = on_device(min_ps, logits.dtype, device)
        # Against the top token's probability, which every filter keeps: renormalising after
        # top-k / top-p leaves the ratios alone, so this equals transformers' min-p after them.
        drop |= sorted_probs < min_p[:, None] * sorted_probs[:, :1]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.softmax(filtered, dim=-1)
