"""LLM: the synchronous engine front — add_request / step / abort / generate / stream.

One step is the three beats of the engine loop: the scheduler picks tokens (schedule), every
rank runs the model on them and rank 0 samples, every rank with asynchronous scheduling (execute),
and the scheduler and the output processor append tokens, apply stop rules and produce
RequestOutputs (update).

With asynchronous scheduling (EngineConfig.async_scheduling, on for GPUs) a step schedules and
launches step n+1 before it updates with step n's tokens, so the host's update, detokenisation
and scheduling run while the GPU computes; step() then reports what step n produced. A request
that stops on a token has one more step in flight, whose result is dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator, Sequence

from shardserve.config import EngineConfig
from shardserve.engine.executor import create_executor
from shardserve.engine.generation_config import read_generation_config, sampling_defaults
from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.prompt_logprobs import StepResult
from shardserve.engine.request import FinishReason, OutputKind, Request, RequestOutput
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import Scheduler, SchedulerOutput
from shardserve.engine.tokenizer import eos_token_ids, load_tokenizer
from shardserve.errors import EngineDeadError, RequestError
from shardserve.models.config import ModelConfig
from shardserve.weights.presharded import check_presharded, reads_presharded

logger = logging.getLogger(__name__)

Prompt = str | Sequence[int]


def _runs_on_gpus(config: EngineConfig) -> bool:
    if config.devices:
        return all(d.startswith("cuda") for d in config.devices)
    import torch

    return torch.cuda.is_available()


def encode_prompt(tokenizer, prompt: Prompt, params: SamplingParams, vocab_size: int, max_model_len: int) -> list[int]:
    """Token ids of a text or token-id prompt, validated (with the request's stop and logit_bias
    token ids) for any engine serving this model.

    Raises RequestError (a ValueError) naming the problem; a too-long request names both numbers.
    """
    if isinstance(prompt, str):
        token_ids = tokenizer.encode(prompt)
    else:
        token_ids = list(prompt)
        if not all(isinstance(t, int) and 0 <= t < vocab_size for t in token_ids):
            raise RequestError(f"prompt token ids must be integers in [0, {vocab_size})")
    if not token_ids:
        raise RequestError("prompt must not be empty")
    check_params_token_ids(params, vocab_size)
    if len(token_ids) + params.max_new_tokens > max_model_len:
        raise RequestError(
            f"prompt has {len(token_ids)} tokens + max_new_tokens {params.max_new_tokens} "
            f"= {len(token_ids) + params.max_new_tokens} > max_model_len {max_model_len}"
        )
    return token_ids


def check_params_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """The request's own token ids (stop ids, logit_bias ids) against the vocabulary: a step would
    index past its logits with one beyond it, and that stops the engine. RequestError names it."""
    if not all(t < vocab_size for t in params.stop_token_ids):
        raise RequestError(f"stop_token_ids must be integers in [0, {vocab_size}), got {list(params.stop_token_ids)}",
                           "stop_token_ids")
    if beyond := [t for t, _ in params.logit_bias if t >= vocab_size]:
        raise RequestError(f"logit_bias token ids must be integers in [0, {vocab_size}), got {beyond}", "logit_bias")


class LLM:
    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, **options):
        if config is None:
            if model is None:
                from shardserve.assets import default_model_path

                model = str(default_model_path())
            config = EngineConfig(model=model, **options)
        if config.async_scheduling is None:
            config = dataclasses.replace(config, async_scheduling=_runs_on_gpus(config))
        self.config = config
        started = time.perf_counter()
        self.model_config = ModelConfig.from_hf(config.model)
        if reads_presharded(config.load_format, config.model):
            check_presharded(config.model, config.tensor_parallel_size, config.quantization)
        self.tokenizer = load_tokenizer(config.model)
        generation_config = read_generation_config(config.model)  # sampling defaults, EOS ids
        # What requests without their own SamplingParams decode with (engine/generation_config.py).
        self.sampling_defaults = sampling_defaults(generation_config, config.model)
        self.max_model_len = min(config.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings)
        self.executor = create_executor(config)
        try:
            num_blocks = self.executor.call("available_kv_blocks", self.max_model_len)
            if num_blocks * config.block_size < self.max_model_len:
                raise ValueError(
                    f"the KV cache holds {num_blocks * config.block_size} tokens, fewer than "
                    f"max_model_len {self.max_model_len}: lower max_model_len or give it more memory"
                )
            self.executor.call("allocate_kv_cache", num_blocks, self.max_model_len)
        except BaseException:
            self.executor.shutdown()
            raise
        self.scheduler = Scheduler(
            BlockManager(num_blocks, config.block_size, config.enable_prefix_caching),
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_chunked_prefill=config.enable_chunked_prefill,
            eos_token_ids=eos_token_ids(config.model, self.model_config, self.tokenizer, generation_config),
        )
        self.outputs = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        self._inflight: SchedulerOutput | None = None  # launched, not updated
        self._failed: BaseException | None = None  # what broke a step (step() says why)
        self._profiling = False
        # Warm-up (CUDA graph capture) is reported apart from loading the weights.
        self.warmup_seconds = self.executor.call("warmup_seconds")
        self.load_seconds = time.perf_counter() - started - self.warmup_seconds
        logger.info("engine ready: load %.1f s, warm-up %.1f s: %s", self.load_seconds, self.warmup_seconds, config.model)

    # -- requests ---------------------------------------------------------------------------
    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams' defaults with the model's generation_config.json sampling values, as
        vLLM's LLM uses when a call passes none."""
        return SamplingParams(**self.sampling_defaults)

    def encode(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """Token ids of a prompt, checked against the model length (ValueError names both)."""
        return encode_prompt(self.tokenizer, prompt, params, self.model_config.vocab_size, self.max_model_len)

    def add_request(
        self, request_id: str | None, prompt: Prompt, params: SamplingParams | None = None,
        prompt_token_ids: list[int] | None = None, *, output_kind: OutputKind = OutputKind.CUMULATIVE,
    ) -> str:
        """Queue a request; `step()` then reports it as `output_kind` says (request.OutputKind)."""
        self._check_alive()
        params = params or self.default_sampling_params()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.scheduler.requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        if prompt_token_ids is None:
            token_ids = self.encode(prompt, params)
        else:  # encoded by the caller (encode_prompt checked the prompt), perhaps with other params
            token_ids = prompt_token_ids
            check_params_token_ids(params, self.model_config.vocab_size)
        request = Request(request_id, token_ids, params, prompt=prompt if isinstance(prompt, str) else None,
                          output_kind=OutputKind(output_kind))
        self.outputs.add(request)
        self.scheduler.add(request)
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.scheduler.finish(request_id, FinishReason.ABORT)
        if request is None:
            return None
        return self.outputs.output(request)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the engine loop ----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduling step. A step that raises leaves the requests it had scheduled half
        done, so the engine refuses to go on (EngineDeadError naming the first failure) rather
        than produce wrong tokens or a confusing later error."""
        self._check_alive()
        try:
            if self.config.async_scheduling:
                return self._step_overlapped()
            sched = self.scheduler.schedule()
            if not sched.seqs and not sched.finished_ids:
                return []
            return self._update(sched, self.executor.call("execute_model", sched))
        except BaseException as e:
            self._failed = e
            raise

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise EngineDeadError(f"the engine failed in an earlier step and cannot go on: "
                                  f"{type(self._failed).__name__}: {self._failed}")

    def _step_overlapped(self) -> list[RequestOutput]:
        inflight, self._inflight = self._inflight, None
        sched = self.scheduler.schedule()
        if sched.seqs or sched.finished_ids:
            self._inflight = sched
            previous = self.executor.call("execute_model_async", sched)
        else:
            previous = self.executor.call("collect") if inflight is not None else None
        return self._update(inflight, previous) if inflight is not None else []

    def _update(self, sched: SchedulerOutput, result: StepResult | None) -> list[RequestOutput]:
        outputs = []
        result = result or StepResult()
        for request in self.scheduler.update(sched, result.sampled, result.prompt_logprobs):
            if self.outputs.new_text(request, request.output_token_ids[-1:]):
                if request.is_finished:  # also out of length: the stop string wins
                    request.finish_reason = FinishReason.STOP
                else:
                    self.scheduler.finish(request.request_id, FinishReason.STOP)
            if (out := self.outputs.output(request)) is not None:
                outputs.append(out)
        return outputs

    def start_profile(self, out_dir: str) -> None:
        """Profile every rank from here to `stop_profile()` (engine/profiler.py): one trace and
        one summary per rank in `out_dir`."""
        if self._profiling:  # checked here: a rank that raises takes the engine down
            raise RuntimeError("the profiler is already running: stop_profile() first")
        self.executor.call("start_profile", out_dir)
        self._profiling = True

    def stop_profile(self) -> list[str]:
        """Stop profiling and write the files; returns rank 0's (the others' sit beside them)."""
        if not self._profiling:
            raise RuntimeError("the profiler is not running: start_profile(dir) first")
        self._profiling = False
        return self.executor.call("stop_profile")

    def stats(self) -> dict:
        bm = self.scheduler.block_manager
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_cache_usage": bm.usage,
            "num_kv_blocks": bm.num_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
        }

    # -- convenience fronts -------------------------------------------------------------------
    def generate(
        self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in input order. Their requests are FINAL's: no output
        is built for them before they finish."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = list(params) if isinstance(params, Sequence) else [params or self.default_sampling_params()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        token_ids = [self.encode(p, sp) for p, sp in zip(prompts, params_list, strict=True)]
        ids = [self.add_request(None, p, sp, t, output_kind=OutputKind.FINAL)
               for p, sp, t in zip(prompts, params_list, token_ids, strict=True)]
        final: dict[str, RequestOutput] = {}
        mine = set(ids)  # requests added before keep running; their outputs are not ours
        while len(final) < len(ids):
            for out in self.step():
                if out.finished and out.request_id in mine:
                    final[out.request_id] = out
        return [final[i] for i in ids]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, *,
               output_kind: OutputKind = OutputKind.CUMULATIVE) -> Iterator[RequestOutput]:
        """Updates of one request as it runs (other requests already added keep running)."""
        request_id = self.add_request(None, prompt, params, output_kind=output_kind)
        try:
            while True:
                for out in self.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            if request_id in self.scheduler.requests:
                self.abort(request_id)

    def shutdown(self) -> None:
        self.executor.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
