"""The prompt logprobs of a request's outputs (engine/output_processor.py), the output processor
fed by hand: built at the first output, shared by CUMULATIVE's later ones, sent once by DELTA,
and none for a request aborted before its prompt was computed."""

from __future__ import annotations

import pytest

from shardserve.engine.output_processor import OutputProcessor
from shardserve.engine.request import FinishReason, OutputKind, Request, RequestStatus
from shardserve.engine.sampling_params import SamplingParams


class _Letters:
    """A tokenizer stand-in: token i is the letter i (only decode is used)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def _outputs(kind: OutputKind, rows_in: int, tokens: int, abort: bool = False) -> list:
    """A 4-token prompt asking for 1 top logprob, with `rows_in` of its 3 rows in; the outputs of
    `tokens` tokens, one a step, then of an abort."""
    request = Request("r", [0, 1, 2, 3], SamplingParams(max_new_tokens=8, prompt_logprobs=1), output_kind=kind)
    request.prompt_logprobs = [-1.0, -2.0, -3.0][:rows_in]
    request.prompt_top_logprobs = [[(1, -1.0)], [(2, -2.0)], [(3, -3.0)]][:rows_in]
    processor = OutputProcessor(_Letters())
    processor.add(request)
    outs = []
    for token_id in range(4, 4 + tokens):
        request.output_token_ids.append(token_id)
        processor.new_text(request, [token_id])
        outs.append(processor.output(request))
    if abort:
        request.status, request.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
        outs.append(processor.output(request))
    return [o for o in outs if o is not None]


WHOLE = ([None, -1.0, -2.0, -3.0], [[], [(1, -1.0)], [(2, -2.0)], [(3, -3.0)]])


def test_every_cumulative_output_shares_the_first_one_prompt_logprobs():
    outs = _outputs(OutputKind.CUMULATIVE, 3, 3, abort=True)
    assert len(outs) == 4 and (outs[0].prompt_logprobs, outs[0].prompt_top_logprobs) == WHOLE
    assert all(o.prompt_logprobs is outs[0].prompt_logprobs for o in outs)
    assert all(o.prompt_top_logprobs is outs[0].prompt_top_logprobs for o in outs)


def test_a_delta_request_first_output_alone_carries_them():
    outs = _outputs(OutputKind.DELTA, 3, 3, abort=True)
    assert len(outs) == 4 and (outs[0].prompt_logprobs, outs[0].prompt_top_logprobs) == WHOLE
    assert all(o.prompt_logprobs is None and o.prompt_top_logprobs is None for o in outs[1:])


def test_a_final_request_output_carries_them():
    (out,) = _outputs(OutputKind.FINAL, 3, 2, abort=True)
    assert (out.prompt_logprobs, out.prompt_top_logprobs) == WHOLE


@pytest.mark.parametrize("kind", list(OutputKind))
def test_a_request_aborted_before_its_prompt_was_computed_gets_none(kind):
    """Its only output is its abort's; part of its rows are in, which are not sent."""
    (out,) = _outputs(kind, 2, 0, abort=True)
    assert out.finished and out.prompt_logprobs is None and out.prompt_top_logprobs is None
