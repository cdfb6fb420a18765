"""The Accelerate engine: Hugging Face transformers `generate`, layers split over the GPUs by
accelerate's `device_map` (pipeline style), with DJLServing's dynamic batching.

It serves what our engine cannot (any causal LM transformers knows, e.g. GPT-2) and is the
baseline that our engine is measured against. One background thread gathers requests for up to
`max_batch_delay` ms or `batch_size` requests, groups those that sample alike, and runs each
group as one left-padded `generate` call. It looks like AsyncEngine to the server.

Per-request behaviour inside a batch comes from two hooks into `generate`: a logits processor
that hides EOS from rows that must not stop yet (min_new_tokens, ignore_eos) and records
log-probabilities, and a stopping criterion, called once per step with the new tokens, that
finishes rows (EOS, max_new_tokens, stop strings, abort) and streams their text out. Presence
and frequency penalties, which transformers does not have, and logit_bias, added as our sampler
adds it, are two more logits processors (`OutputPenalties`, `LogitBias`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import uuid
from pathlib import Path

import torch

from shardserve.engine.llm import encode_prompt
from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.request import FinishReason, OutputKind, Request, RequestStatus
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.tokenizer import eos_token_ids, load_tokenizer
from shardserve.errors import EngineDeadError, ModelLoadError
from shardserve.hf_imports import TRANSFORMERS_IMPORT
from shardserve.serving.accelerate_prompt_logprobs import fill_prompt_logprobs
from shardserve.serving.accelerate_sampling import LogitBias, OutputPenalties, sampling_key
from shardserve.serving.properties import ServingConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
    request: Request
    loop: asyncio.AbstractEventLoop
    stream: asyncio.Queue
    aborted: bool = False

    def send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.stream.put_nowait, item)


class AccelerateEngine:
    def __init__(self, config: ServingConfig, model_dir: Path):
        if config.quantization is not None:
            raise ModelLoadError(f"engine=Accelerate loads weights as they are: quantization {config.quantization!r} "
                                 "(option.dtype / option.quantize) needs our engine (engine=Python or MPI)")
        with TRANSFORMERS_IMPORT:
            from transformers import AutoModelForCausalLM
            from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        from shardserve.config import torch_dtype

        self._repetition = RepetitionPenaltyLogitsProcessor

        dtype = "auto" if config.dtype == "auto" else torch_dtype(config.dtype)
        device_map = config.device_map or ("auto" if torch.cuda.is_available() else None)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=dtype, device_map=device_map,
                local_files_only=True,
            ).eval()
        except Exception as e:
            raise ModelLoadError(f"transformers cannot load {model_dir}: {e}") from e
        self.tokenizer = load_tokenizer(str(model_dir))
        self._worker_tokenizer = load_tokenizer(str(model_dir))  # fast tokenizers are not thread-safe
        hf = self.model.config
        limit = getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", None) or 2048
        self.max_model_len = min(config.max_model_len or limit, limit)
        self.model_config = hf
        self.eos_ids = eos_token_ids(str(model_dir), hf, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or (0,))[0]
        self.batch_size = config.batch_size
        self.max_batch_delay_s = config.max_batch_delay_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._running = 0
        self._dead: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"accelerate-{config.name}", daemon=True)
        self._thread.start()

    @property
    def errored(self) -> bool:
        return self._dead is not None

    def stats(self) -> dict:
        return {"num_running": self._running, "num_waiting": self._queue.qsize(), "kv_cache_usage": 0.0}

    def encode(self, prompt, params: SamplingParams) -> list[int]:
        """Prompt token ids, validated exactly as our engine does it (same checks, same messages)."""
        return encode_prompt(self.tokenizer, prompt, params, self.model_config.vocab_size, self.max_model_len)

    async def generate(self, prompt, params: SamplingParams | None = None, request_id: str | None = None, *,
                       output_kind: OutputKind = OutputKind.CUMULATIVE):
        params = params or SamplingParams()
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._stopping:
            raise EngineDeadError("the engine was shut down")
        ids = self.encode(prompt, params)
        request = Request(request_id or uuid.uuid4().hex, ids, params, prompt=prompt if isinstance(prompt, str) else None,
                          output_kind=OutputKind(output_kind))
        pending = _Pending(request, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(pending)
        finished = False
        try:
            while not finished:
                item = await pending.stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            pending.aborted = not finished  # the batch loop drops it at its next step

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the batch loop (background thread) -----------------------------------------------------
    def _loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                groups: dict = {}
                for pending in batch:
                    groups.setdefault(sampling_key(pending.request), []).append(pending)
                for group in groups.values():
                    self._running = len(group)
                    self._run(group)
                    self._running = 0
        except BaseException as e:  # keep the server up; fail what waits
            logger.exception("accelerate engine loop failed")
            self._dead = e
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if pending is not None:
                    pending.send(EngineDeadError(f"the engine stopped: {e}"))

    def _next_batch(self) -> list[_Pending] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_batch_delay_s
        while len(batch) < self.batch_size and (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return [p for p in batch if not p.aborted]

    def _run(self, group: list[_Pending]) -> None:
        failed = fill_prompt_logprobs(self.model, [p.request for p in group])  # for the first output
        for pending in group:
            if pending.request.request_id in failed:
                pending.send(failed[pending.request.request_id])
        if not (group := [p for p in group if p.request.request_id not in failed]):
            return
        rows = _Rows(group, self._worker_tokenizer, self.eos_ids)
        params = group[0].request.params
        longest = max(len(p.request.prompt_token_ids) for p in group)
        input_ids = torch.full((len(group), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, pending in enumerate(group):  # left padding: every row's next token lines up
            ids = pending.request.prompt_token_ids
            input_ids[i, longest - len(ids):] = torch.tensor(ids)
            mask[i, longest - len(ids):] = 1
        device = self.model.device
        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device),
                    max_new_tokens=max(p.request.params.max_new_tokens for p in group),
                    do_sample=not params.greedy,
                    temperature=params.temperature if not params.greedy else None,
                    top_p=params.top_p if not params.greedy else None,
                    top_k=(params.top_k or None) if not params.greedy else None,
                    min_p=(params.min_p or None) if not params.greedy else None,
                    # Applied below, after the log-probabilities are read (our engine reports the
                    # model's own, before penalties and min_new_tokens suppression).
                    repetition_penalty=1.0,
                    eos_token_id=None,  # EOS and stop ids are per row here (min_new_tokens)
                    pad_token_id=self.pad_id,
                    # Our sampler's order: penalties, logit_bias, then min_new_tokens suppression.
                    logits_processor=[rows.read_logprobs, self._repetition(params.repetition_penalty),
                                      OutputPenalties(longest, params.presence_penalty, params.frequency_penalty),
                                      LogitBias(params.logit_bias), rows.suppress],
                    stopping_criteria=[rows.on_step],
                )
        except Exception as e:
            logger.exception("generate failed")
            rows.fail(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
        rows.fail(RuntimeError("generation ended early"))  # no-op for rows that finished


class _Rows:
    """The group's requests as generate() runs: their tokens, text, stop rules and streams."""

    def __init__(self, group: list[_Pending], tokenizer, eos_ids: tuple[int, ...]):
        self.group = group
        self.eos_ids = eos_ids
        self.outputs = OutputProcessor(tokenizer)
        for pending in group:
            self.outputs.add(pending.request)
        self.done = [False] * len(group)
        self.logprobs: torch.Tensor | None = None
        self.want_logprobs = any(p.request.params.logprobs for p in group)

    def read_logprobs(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The model's own log-probabilities, as our engine reports them."""
        if self.want_logprobs:
            self.logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()
        return scores

    def suppress(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Below min_new_tokens a row may not end: its stop ids and EOS (unless ignored) are out,
        as in our engine's sampler."""
        for i, pending in enumerate(self.group):
            p, n = pending.request.params, len(pending.request.output_token_ids)
            if n < p.min_new_tokens:
                ids = list(p.ending_token_ids(self.eos_ids))
                if ids:
                    scores[i, torch.tensor(ids, device=scores.device)] = float("-inf")
        return scores

    def on_step(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, -1].tolist()
        for i, pending in enumerate(self.group):
            if self.done[i]:
                continue
            if pending.aborted:
                self.done[i] = True
                self.outputs.discard(pending.request.request_id)
                continue
            self._advance(i, pending, new[i])
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _advance(self, i: int, pending: _Pending, token: int) -> None:
        request = pending.request
        request.output_token_ids.append(token)
        if request.params.logprobs and self.logprobs is not None:
            request.logprobs.append(float(self.logprobs[i, token]))
            if request.params.top_logprobs:
                top = self.logprobs[i].topk(request.params.top_logprobs)
                request.top_logprobs.append(list(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
        p = request.params
        if len(request.output_token_ids) >= p.min_new_tokens and p.ends_on(token, self.eos_ids):
            request.stop_token_id = token
            self._finish(request, FinishReason.STOP)
        elif len(request.output_token_ids) >= request.params.max_new_tokens:
            self._finish(request, FinishReason.LENGTH)
        if self.outputs.new_text(request, [token]):
            self._finish(request, FinishReason.STOP)
        self.done[i] = request.is_finished
        if (out := self.outputs.output(request)) is not None:  # None: FINAL's, while it runs
            pending.send(out)

    @staticmethod
    def _finish(request: Request, reason: FinishReason) -> None:
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason

    def fail(self, error: BaseException) -> None:
        for i, pending in enumerate(self.group):
            if not self.done[i]:
                self.done[i] = True
                self.outputs.discard(pending.request.request_id)
                pending.send(error)
