"""A launched step's sampled tokens, while the next step may already be running (asynchronous
scheduling, engine/model_runner.py): on the device, where the next step's placeholder inputs are
filled from them, and on their way to host memory, where rank 0 reads them once they are there,
with the step's prompt logprobs (engine/prompt_logprobs.py).
"""

from __future__ import annotations

import torch

from shardserve.engine.prompt_logprobs import PendingPromptLogprobs, StepResult
from shardserve.engine.request import PLACEHOLDER
from shardserve.engine.sampler import on_device, read_samples
from shardserve.engine.sampling_params import MAX_TOP_LOGPROBS
from shardserve.engine.scheduler import ScheduledSeq

# request id -> (token id, its logprob or None, the top logprobs' (token id, logprob) or None)
SampledTokens = dict[str, tuple[int, float | None, list[tuple[int, float]] | None]]


class HostBuffers:
    """Host memory, pinned on GPUs, that one step's sampled tokens and logprobs are copied into
    (up to max_num_seqs rows; logprobs as Sampler.sample lays them out, top ones included), and
    the event that fires once the copy is done."""

    def __init__(self, max_num_seqs: int, device: torch.device):
        pinned = device.type == "cuda"
        self.tokens = torch.empty(max_num_seqs, dtype=torch.int64, pin_memory=pinned)
        self.logprobs = torch.empty(max_num_seqs * (1 + 2 * MAX_TOP_LOGPROBS), dtype=torch.float32, pin_memory=pinned)
        self.event = torch.cuda.Event() if pinned else None


class HostBufferPair:
    """Two HostBuffers, allocated once and used in turn by the sampling steps. Two suffice: a
    step's tokens are read at the latest by the call that launches the next sampling step
    (execute_model_async returns them; execute_model reads its own and runs only with none in
    flight), so the step after that never overwrites unread tokens."""

    def __init__(self, max_num_seqs: int, device: torch.device):
        self._pair = (HostBuffers(max_num_seqs, device), HostBuffers(max_num_seqs, device))
        self._turn = 0

    def next(self) -> HostBuffers:
        self._turn ^= 1
        return self._pair[self._turn]


class PendingStep:
    """A launched step's sampled tokens: on the device (the next step's placeholders read them)
    and, given host buffers (rank 0: the only one that reads them), on their way there (read
    once the copy's event has fired); with the prompt logprobs it computed (rank 0)."""

    def __init__(
        self, request_ids: list[str], infos: list, tokens: torch.Tensor | None, logprobs: torch.Tensor | None,
        host: HostBuffers | None, prompt: PendingPromptLogprobs | None = None,
    ):
        self.rows = {rid: row for row, rid in enumerate(request_ids)}
        self.tokens = tokens
        self.infos = infos
        self._host = host
        self._prompt = prompt
        if host is None:
            return
        n = len(request_ids)
        self._tokens = host.tokens[:n].copy_(tokens, non_blocking=True)
        self._logprobs = None
        if logprobs is not None:  # a contiguous [n, columns] view: one copy straight from the device
            self._logprobs = host.logprobs[: logprobs.numel()].view_as(logprobs).copy_(logprobs, non_blocking=True)
        if host.event is not None:
            host.event.record()

    @classmethod
    def prompt_only(cls, prompt: PendingPromptLogprobs | None) -> PendingStep | None:
        """A step that samples nothing: its prompt logprobs, if it computed any (rank 0)."""
        return None if prompt is None else cls([], [], None, None, None, prompt)

    def result(self) -> StepResult:
        prompt = self._prompt.result() if self._prompt is not None else {}
        if not self.rows:
            return StepResult({}, prompt)
        assert self._host is not None, "only a step copied to host buffers can be read"
        if self._host.event is not None:
            self._host.event.synchronize()
        sampled = read_samples(self._tokens, self._logprobs, self.infos)
        return StepResult(dict(zip(self.rows, sampled, strict=True)), prompt)


def placeholder_sources(
    seqs: list[ScheduledSeq], previous: PendingStep | None
) -> tuple[list[int], torch.Tensor, list[int]] | None:
    """(seq indices whose token is a placeholder, the previous step's device tokens, their rows
    there), or None when every input token is known."""
    dst = [i for i, s in enumerate(seqs) if s.token_ids[0] == PLACEHOLDER]
    if not dst:
        return None
    if previous is None or any(seqs[i].request_id not in previous.rows for i in dst):
        raise RuntimeError("a step's input token is in flight but no step in flight sampled it")
    return dst, previous.tokens, [previous.rows[seqs[i].request_id] for i in dst]


def fill_placeholders(ids: torch.Tensor, at: list[int], fill: tuple[list[int], torch.Tensor, list[int]]) -> None:
    """ids[at[k]] = the previous step's token for the k-th placeholder of `fill`
    (placeholder_sources), on the device: no wait for that step."""
    device = ids.device
    ids[on_device(at, torch.int64, device)] = fill[1][on_device(fill[2], torch.int64, device)]
