"""The engine's output processor alone: step outputs of a request fed tokens one at a time."""

from __future__ import annotations

from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.request import FinishReason, OutputKind, Request, RequestStatus
from shardserve.engine.sampling_params import SamplingParams


def feed(tokenizer, kind: OutputKind, token_ids: list[int], params: SamplingParams,
         abort: bool = False) -> list:
    """The outputs of a request that gets `token_ids` one a step (aborted after the last)."""
    request = Request("r", tokenizer.encode("x"), params, output_kind=kind)
    outputs = OutputProcessor(tokenizer)
    outputs.add(request)
    outs = []
    for token_id in token_ids:
        request.output_token_ids.append(token_id)
        if len(request.output_token_ids) == params.max_new_tokens:
            request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.LENGTH
        if outputs.new_text(request, [token_id]):
            request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.STOP
        outs.append(outputs.output(request))
        if request.is_finished:
            break
    if abort:
        request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
        outs.append(outputs.output(request))
    return [o for o in outs if o is not None]
